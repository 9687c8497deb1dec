"""A 262k-vocabulary model through the fine-tune and the scorer at the pipeline's defaults.

    NLI_QLORA_GPU_MEMORY_GIB=24 python -m bench.big_vocab --snli DIR --out DIR

A random-weight Llama-style model of about 270 M parameters with Gemma-3-270M's sizes (hidden 640,
18 layers, vocabulary 262,144), the embedded tokenizer (its ids all fit). The defaults of
params.yaml run unchanged: the global batch of 256, the micro-batch and the scoring batch picked to
fit the device. Writes the layout picked, tokens/s, pairs/s and peak memory.
"""
import time
from pathlib import Path

import torch

from bench.phi2 import arguments, gpu_name, snli_rows, write_result
from bench.train import run_variant
from stages.lib import distributed, params
from stages.lib.measure import peak_memory
from stages.lib.model import load_quantized, load_tokenizer
from stages.lib.prompt import Encoder
from stages.lib.scoring import PackedScorer, fitting_batch_size, score_rows
from stages.lib import runtime

SHAPE = dict(hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
             num_key_value_heads=1, head_dim=256, vocab_size=262144, tie_word_embeddings=True)


def random_model(directory):
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        from transformers import AutoModelForCausalLM, LlamaConfig

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(LlamaConfig(**SHAPE), dtype=torch.bfloat16)
        model.save_pretrained(directory)
        load_tokenizer(params.load("model")).save_pretrained(directory)
    return params.load("model", name=str(directory))


def main():
    parser = arguments(__doc__)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--eval-examples", type=int, default=4096)
    args = parser.parse_args()
    runtime.configure()
    model_cfg = random_model(args.model_dir + "-big-vocab")
    rows = snli_rows(args.snli, "train", 20000)
    train = run_variant(model_cfg, params.load("lora"), rows, {}, args.steps, warmup=3)
    torch.cuda.reset_peak_memory_stats()
    encoder = Encoder(load_tokenizer(model_cfg), params.load("prompt"))
    scorer = PackedScorer(load_quantized(model_cfg), encoder)
    prompts = encoder.prompt_ids(snli_rows(args.snli, "test", args.eval_examples))
    batch_size = fitting_batch_size(scorer, prompts, params.load("eval").batch_size)
    started = time.perf_counter()
    score_rows(scorer, prompts, batch_size)
    torch.cuda.synchronize()
    evaluation = {"batch_size": batch_size, "examples_per_s": len(prompts) / (time.perf_counter() - started),
                  "memory": peak_memory()}
    table = [["", "layout / batch", "speed", "GiB alloc", "GiB reserved"]]
    if train.get("out_of_memory"):
        table.append(["finetune", "OOM", "", "", ""])
    else:
        table.append(["finetune", f"{train['processes']} x {train['micro_batch_size']} x {train['accumulation_steps']}",
                      f"{train['tokens_per_s']:,.0f} tokens/s", f"{train['memory']['gpu_peak_allocated_gib']:.1f}",
                      f"{train['memory']['gpu_peak_reserved_gib']:.1f}"])
    table.append(["scoring", batch_size, f"{evaluation['examples_per_s']:,.0f} pairs/s",
                  f"{evaluation['memory']['gpu_peak_allocated_gib']:.1f}",
                  f"{evaluation['memory']['gpu_peak_reserved_gib']:.1f}"])
    result = {"device": gpu_name(), "shape": SHAPE, "base_params": train.get("base_params"), "train": train,
              "evaluation": evaluation}
    write_result(args.out, "big_vocab", result, table)


if __name__ == "__main__":
    with distributed.session():
        main()
