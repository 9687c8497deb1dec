"""Tokens a pair the scorer feeds the model, padding included, for each row layout: no GPU needed.

    python -m bench.tokens --snli DIR [--split test] [--batch-size 1024] [--row-lengths 0 2 3 4]

Counts the evaluate stages' own rows and batches (`PackedAnswers.rows`, `scoring.batches`) for the
zero-shot prompts and the k-shot ones of `baselines`, with the tokenizer of params.yaml's model (the
phi-2-shape benchmarks use it too). Row lengths 0: one pair a row, nothing shared.
"""
import argparse
from pathlib import Path

import torch

from stages.lib import params
from stages.lib.baselines import kshot_encoder
from stages.lib.batches import PackedAnswers
from stages.lib.model import load_tokenizer
from stages.lib.prompt import Encoder
from stages.lib.scoring import batches
from stages.lib.snli import read_rows


def fed_tokens(packed, prompts, batch_size):
    """Tokens of every batch as the scorer builds it (`PackedAnswers.batch`, rows x width)."""
    return sum(packed.batch([[prompts[i] for i in row] for row in rows], 0, torch.bfloat16)[0]["input_ids"].numel()
               for rows in batches(packed.rows(prompts, batch_size), batch_size))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snli", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=params.load("eval").batch_size)
    parser.add_argument("--row-lengths", type=int, nargs="*", default=[0, 2, PackedAnswers.ROW_LENGTHS, 4])
    args = parser.parse_args()
    tokenizer, prompt_cfg = load_tokenizer(params.load("model")), params.load("prompt")
    rows = [r for r in read_rows(Path(args.snli) / f"{args.split}.jsonl.gz") if r["label"] != -1]
    train = [r | {"idx": i} for i, r in enumerate(read_rows(Path(args.snli) / "train.jsonl.gz")) if r["label"] != -1]
    encoders = {"zero-shot": Encoder(tokenizer, prompt_cfg),
                "k-shot": kshot_encoder(tokenizer, prompt_cfg, train, params.load("baselines"), "train")[0]}
    print(f"| prompts ({len(rows):,} pairs, batch {args.batch_size}) | "
          + " | ".join(f"rows {n}x" for n in args.row_lengths) + " |")
    print("|---|" + "---|" * len(args.row_lengths))
    for name, encoder in encoders.items():
        prompts = encoder.prompt_ids(rows)
        counts = [fed_tokens(PackedAnswers(encoder.answers, "cpu", n), prompts, args.batch_size) / len(prompts)
                  for n in args.row_lengths]
        print(f"| {name} | " + " | ".join(f"{c:.1f}" for c in counts) + " |")


if __name__ == "__main__":
    main()
