"""Stronger references than the raw zero-shot scores, scored by the same packed scorer.

- Contextual calibration (Zhao et al., 2021): a model biased towards one label gives that label a
  high score whatever the pair. Its label distribution on content-free pairs ("N/A" as premise and
  hypothesis) estimates that bias; dividing each pair's label probabilities by it removes it.
- k-shot in context: k training pairs with their gold answers before every prompt.
"""
import math
import sys

from .prompt import Encoder, demonstrations
from .snli import balanced_sample


def log_label_distribution(scores):
    """Log-softmax of one pair's verbalizer log-likelihoods: the labels' log-probabilities among themselves."""
    top = max(scores)
    normalizer = top + math.log(sum(math.exp(s - top) for s in scores))
    return [s - normalizer for s in scores]


def label_prior(scorer, encoder, content_free):
    """The model's mean label distribution over content-free pairs."""
    rows = [{"premise": text, "hypothesis": text} for text in content_free]
    distributions = [[math.exp(p) for p in log_label_distribution(s)] for s in scorer(encoder.prompt_ids(rows))]
    return [sum(column) / len(distributions) for column in zip(*distributions)]


def calibrate(scores, prior):
    """Each label's log-probability among the labels, minus the log of its prior (a prior that rounds
    to zero counts as the smallest positive float)."""
    log_prior = [math.log(max(q, sys.float_info.min)) for q in prior]
    return [[p - q for p, q in zip(log_label_distribution(s), log_prior)] for s in scores]


def kshot_encoder(tokenizer, prompt_cfg, train_rows, cfg, source):
    """(an Encoder that puts `cfg.shots` training pairs before every prompt, the pairs' idx)."""
    shown = balanced_sample(train_rows, cfg.shots // 3, cfg.seed, source)
    return Encoder(tokenizer, prompt_cfg, prefix=demonstrations(prompt_cfg, shown)), [row["idx"] for row in shown]
