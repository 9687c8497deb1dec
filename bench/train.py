"""Fine-tuning speed at phi-2 shape: the seed recipe and the pipeline's path, same examples, one call.

    python -m bench.train --snli DIR --out DIR [--steps 12] [--warmup 3]
    torchrun --nproc-per-node 2 -m bench.train ...   # data-parallel, as `compute.processes: 2` runs it

Every variant is the `finetune` stage's own Trainer (stages.finetune.build_trainer) configured
through TrainParams: the seed recipe (batch 1 x accumulation 4, gradient checkpointing, paged 8-bit
AdamW, logits at every position, fp32 upcast), then one change at a time up to params.yaml's
defaults. LoRA r=32 on q/k/v/dense, NF4 + double quant, bf16 compute. Tokens are non-padding;
utilisation counts 4 x params FLOPs per token against the bf16 ceiling.
"""
import dataclasses
import gc
import tempfile

import torch

from bench.phi2 import PEAK_BF16_FLOPS, arguments, gpu_name, shared_model, snli_rows, write_result
from stages.lib.training import Throughput, build_trainer
from stages.lib import distributed, params
from stages.lib.metrics import peak_memory
from stages.lib.params import LoraParams

LORA = LoraParams(r=32, alpha=64, dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "dense"])
NO_SAVING = dict(save_steps=10**9, logging_steps=10**9)
SEED_RECIPE = dict(batch_size=1, grad_accum=4, gradient_checkpointing=True, optim="paged_adamw_8bit",
                   answer_logits_only=False, fp32_upcast=True, group_by_length=False)
# Each step changes one thing from the one before; the last ones are params.yaml's speed defaults.
VARIANTS = [
    ("seed recipe", SEED_RECIPE),
    ("batch 64, no checkpointing, fused AdamW", dict(SEED_RECIPE, batch_size=64, grad_accum=1,
                                                     gradient_checkpointing=False, optim="adamw_torch_fused")),
    ("+ length-grouped batches", dict(batch_size=64, answer_logits_only=False, fp32_upcast=True)),
    ("+ answer logits only", dict(batch_size=64, fp32_upcast=True)),
    ("+ no fp32 upcast", dict(batch_size=64)),
    ("batch 128 + checkpointing", dict(batch_size=128, gradient_checkpointing=True)),
    ("batch 256 + checkpointing", dict(batch_size=256, gradient_checkpointing=True)),
]


def run_variant(model_cfg, rows, changes, steps, warmup):
    train_cfg = dataclasses.replace(params.load("train"), **NO_SAVING, **changes, max_steps=steps + warmup)
    throughput = Throughput(skip_steps=warmup)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = build_trainer(model_cfg, params.load("prompt"), LORA, train_cfg, rows, scratch, [throughput])
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        trainable, total = trainer.model.get_nb_trainable_parameters()
        try:
            trainer.train()
            result = {"tokens_per_s": throughput.tokens / throughput.seconds, "seconds": throughput.seconds,
                      "tokens": throughput.tokens, "steps": trainer.state.global_step - warmup,
                      "examples_per_s": (trainer.state.global_step - warmup) * train_cfg.batch_size
                      * train_cfg.grad_accum * distributed.world_size() / throughput.seconds,
                      "base_params": total - trainable}
        except torch.OutOfMemoryError:
            result = {"out_of_memory": True}
        result |= {"memory": peak_memory(), "params": dataclasses.asdict(train_cfg)}
    del trainer
    gc.collect()
    torch.cuda.empty_cache()
    return result


def main():
    parser = arguments(__doc__)
    parser.add_argument("--examples", type=int, default=20000, help="an epoch of this many pairs is reported")
    parser.add_argument("--steps", type=int, default=12, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    args = parser.parse_args()
    model_cfg = shared_model(args)
    rows = snli_rows(args.snli, "train", args.examples)
    results = {}
    for name, changes in VARIANTS:
        if args.only and name not in args.only:
            continue
        results[name] = run_variant(model_cfg, rows, changes, args.steps, args.warmup)
        results[name]["memory_per_process"] = distributed.gather(results[name]["memory"])
        if distributed.is_main():
            print(name, {k: v for k, v in results[name].items() if k != "params"}, flush=True)
    if not distributed.is_main():
        return
    seed = results.get("seed recipe", {}).get("tokens_per_s")
    table = [["variant", "tokens/s", "x seed", "s/epoch", "GiB alloc", "GiB reserved", "util %"]]
    for name, r in results.items():
        if r.get("out_of_memory"):
            table.append([name, "OOM", "", "", "", "", ""])
            continue
        r["seconds_per_epoch"] = args.examples / r["examples_per_s"]
        r["utilisation"] = r["tokens_per_s"] * 4 * r["base_params"] / (PEAK_BF16_FLOPS * distributed.world_size())
        r["x_seed"] = r["tokens_per_s"] / seed if seed else None
        mem = r["memory"]
        table.append([name, f"{r['tokens_per_s']:,.0f}", f"{r['x_seed']:.1f}" if seed else "",
                      f"{r['seconds_per_epoch']:,.0f}", f"{mem.get('gpu_peak_allocated_gib', 0):.1f}",
                      f"{mem.get('gpu_peak_reserved_gib', 0):.1f}", f"{100 * r['utilisation']:.1f}"])
    result = {"device": gpu_name(), "processes": distributed.world_size(), "shape": "phi-2 (random weights)",
              "lora": dataclasses.asdict(LORA), "epoch_examples": args.examples, "timed_steps": args.steps,
              "warmup_steps": args.warmup, "variants": results}
    write_result(args.out, f"train_phi2_{distributed.world_size()}proc", result, table)


if __name__ == "__main__":
    main()
