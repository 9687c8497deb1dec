"""Evaluation speed at phi-2 shape: the pipeline's scorer vs generate-and-parse, same examples, one call.

    python -m bench.eval --snli DIR --out DIR [--examples 4096] [--generate-examples 128]
    torchrun --nproc-per-node 2 -m bench.eval ...   # batches shared out, as `compute.processes: 2` runs it

The scorer is the evaluate stages' own `score_rows` (every label of several pairs in one packed
forward pass, their shared prefixes laid out once, logits at the answer positions only), timed for each
of `--layouts` (whole: each prompt laid out whole, nothing shared); its scores are checked against
scoring each label alone.
The baseline is the seed's approach: greedy generation of a few tokens one pair at a time, then
parsing the label out of the text; it runs on the first pairs of the same list.
"""
import torch

from bench.phi2 import arguments, gpu_name, model_label, model_tag, shared_model, snli_rows, write_result
from stages.lib import distributed, params
from stages.lib.measure import peak_memory, synced_clock
from stages.lib.model import load_quantized, load_tokenizer
from stages.lib.prompt import Encoder
from stages.lib.scoring import PackedScorer, answer_logprobs, best_label, score_rows
from stages.lib.snli import LABELS
from stages.lib import runtime


LAYOUTS = {"shared": True, "whole": False}  # score_rows' share_prefixes


def seconds(work):
    started = synced_clock()
    work()
    return synced_clock() - started


@torch.inference_mode()
def generate_and_parse(model, encoder, rows, new_tokens=4):
    labels = []
    for row in rows:
        ids = torch.tensor(encoder.prompt_ids([row]), device=model.device)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=encoder.tokenizer.pad_token_id)
        text = encoder.tokenizer.decode(out[0, ids.shape[1]:]).lower()
        labels.append(next((k for k, label in enumerate(LABELS) if label in text), -1))
    return labels


@torch.inference_mode()
def alone_scores(model, encoder, rows):
    """Each label scored by its own unpadded pass: the reference the packed scorer must agree with."""
    return [[answer_logprobs(model, prompt, answer).sum().item() for answer in encoder.answers]
            for prompt in encoder.prompt_ids(rows)]


def main():
    parser = arguments(__doc__)
    parser.add_argument("--examples", type=int, default=4096)
    parser.add_argument("--generate-examples", type=int, default=128)
    parser.add_argument("--batch-sizes", type=int, nargs="*", help="default: params.yaml eval.batch_size")
    parser.add_argument("--layouts", nargs="*", choices=LAYOUTS, default=list(LAYOUTS),
                        help="shared: prompts share their prefixes (the pipeline's); whole: each prompt laid out whole")
    parser.add_argument("--check-examples", type=int, default=64, help="pairs also scored one label at a time")
    args = parser.parse_args()
    runtime.configure()
    model_cfg = shared_model(args)
    encoder = Encoder(load_tokenizer(model_cfg), params.load("prompt"))
    model = load_quantized(model_cfg)
    rows = snli_rows(args.snli, "test", args.examples)
    prompts, scorer = encoder.prompt_ids(rows), PackedScorer(model, encoder)
    shard = (distributed.rank(), distributed.world_size())
    score_rows(scorer, prompts[:256], 64)  # warm-up: CUDA context, kernels, allocator
    results = {}
    for batch_size in args.batch_sizes or [params.load("eval").batch_size]:
        for layout in args.layouts:
            took = min(seconds(lambda: score_rows(scorer, prompts, batch_size, shard, share_prefixes=LAYOUTS[layout]))
                       for _ in range(2))  # best of 2
            took = max(distributed.gather(took) or [took])  # the slowest process; None off the main one
            results[f"scorer, batch {batch_size}, {layout} prompts"] = {
                "examples": len(rows), "layout": layout, "seconds": took, "examples_per_s": len(rows) / took}
    if distributed.world_size() == 1 and args.generate_examples:
        few = rows[:args.generate_examples]
        took = seconds(lambda: generate_and_parse(model, encoder, few))
        results["generate and parse, batch 1"] = {"examples": len(few), "seconds": took,
                                                  "examples_per_s": len(few) / took}
    if distributed.world_size() == 1 and args.check_examples:
        few = rows[:args.check_examples]
        packed, alone = score_rows(scorer, prompts[:len(few)], 64), alone_scores(model, encoder, few)
        gaps = [abs(a - b) for i, row in enumerate(alone) for a, b in zip(packed[i], row)]
        results["packed vs one label at a time"] = {
            "examples": len(few), "max_abs_difference": max(gaps),
            "same_prediction": sum(best_label(packed[i]) == best_label(row) for i, row in enumerate(alone)) / len(few)}
    memory = distributed.gather(peak_memory())
    if not distributed.is_main():
        return
    table = [["method", "examples", "examples/s"]]
    table += [[name, r["examples"], f"{r['examples_per_s']:,.1f}"]
              for name, r in results.items() if "examples_per_s" in r]
    table += [[name, r["examples"],
               f"max abs difference {r['max_abs_difference']:.4f}, same prediction {r['same_prediction']:.1%}"]
              for name, r in results.items() if "max_abs_difference" in r]
    result = {"device": gpu_name(), "processes": distributed.world_size(), "model": model_label(args),
              "results": results, "memory_per_process": memory}
    write_result(args.out, f"eval_{model_tag(args)}_{distributed.world_size()}proc", result, table)


if __name__ == "__main__":
    with distributed.session():
        main()
