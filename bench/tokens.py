"""Tokens a pair the scorer feeds the model, and keys its attention gathers, for each layout: no GPU needed.

    python -m bench.tokens --snli DIR [--split test] [--batch-size 1024]

Lays out the evaluate stages' own batches (`score_rows` with a stand-in that counts instead of
scoring, `eval.batch_size` prompts each) for the zero-shot prompts and the k-shot ones of `baselines`,
with the tokenizer of params.yaml's model (the phi-2-shape benchmarks use it too): prompts sharing
their prefixes (the pipeline's layout), and each prompt whole.
"""
import argparse
from pathlib import Path

import torch

from stages.lib import params
from stages.lib.baselines import kshot_encoder
from stages.lib.batches import PackedAnswers
from stages.lib.model import load_tokenizer
from stages.lib.prompt import Encoder
from stages.lib.scoring import score_rows
from stages.lib.snli import read_rows


class CountingScorer:
    """Stands in for `PackedScorer` in the evaluate stages' own `score_rows`: lays each batch out as
    the scorer would, and counts its tokens and gathered keys instead of running a model."""

    def __init__(self, packed):
        self.packed, self.tokens, self.keys = packed, 0, 0

    def packed_scores(self, prompts, share_prefixes):
        batch = self.packed.batch(prompts, share_prefixes)
        self.tokens += batch["input_ids"].numel()
        self.keys += batch["prefix_tree"].keys.numel()
        return torch.zeros(len(prompts), self.packed.labels)


def fed(packed, prompts, batch_size, share_prefixes):
    """(tokens, keys) of every batch as `score_rows` builds them."""
    counter = CountingScorer(packed)
    score_rows(counter, prompts, batch_size, share_prefixes=share_prefixes)
    return counter.tokens, counter.keys


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snli", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=params.load("eval").batch_size)
    args = parser.parse_args()
    tokenizer, prompt_cfg = load_tokenizer(params.load("model")), params.load("prompt")
    rows = [r for r in read_rows(Path(args.snli) / f"{args.split}.jsonl.gz") if r["label"] != -1]
    train = [r | {"idx": i} for i, r in enumerate(read_rows(Path(args.snli) / "train.jsonl.gz")) if r["label"] != -1]
    encoders = {"zero-shot": Encoder(tokenizer, prompt_cfg),
                "k-shot": kshot_encoder(tokenizer, prompt_cfg, train, params.load("baselines"), "train")[0]}
    print(f"| prompts ({len(rows):,} pairs, batch {args.batch_size}) | tokens, whole | tokens, shared "
          "| keys gathered, shared |")
    print("|---|---|---|---|")
    for name, encoder in encoders.items():
        prompts, packed = encoder.prompt_ids(rows), PackedAnswers(encoder.answers, "cpu")
        (whole, _), (shared, keys) = (fed(packed, prompts, args.batch_size, share) for share in (False, True))
        print(f"| {name} | {whole / len(prompts):.1f} | {shared / len(prompts):.1f} | {keys / len(prompts):.1f} |")


if __name__ == "__main__":
    main()
