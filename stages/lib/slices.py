"""Slices of the evaluation pairs that explain where a model is right: each pair gets one tag per axis.

Words are lower-cased runs of letters and apostrophes. Bins are fixed (not quantiles) so a slice
means the same thing in every run and across commits.
"""
import re

import pandas as pd

from .stats import wilson_interval
from .snli import LABELS

NEGATIONS = {"not", "no", "never", "nobody", "nothing", "none", "nowhere", "neither", "nor", "without", "cannot"}
OVERLAP_BINS = [(0.0, "0–25 %"), (0.25, "25–50 %"), (0.5, "50–75 %"), (0.75, "75–100 %")]  # lower edges
HYPOTHESIS_LENGTH_BINS = [(1, "1–5 words"), (6, "6–8 words"), (9, "9–12 words"), (13, "13+ words")]
PREMISE_LENGTH_BINS = [(1, "1–10 words"), (11, "11–15 words"), (16, "16–22 words"), (23, "23+ words")]
AXES = {  # column -> (title in the report, its slices in display order)
    "gold_label": ("gold label", list(LABELS)),
    "negation": ("negation word in the hypothesis", ["yes", "no"]),
    "overlap": ("hypothesis words found in the premise", [label for _, label in OVERLAP_BINS]),
    "hypothesis_length": ("hypothesis length", [label for _, label in HYPOTHESIS_LENGTH_BINS]),
    "premise_length": ("premise length", [label for _, label in PREMISE_LENGTH_BINS]),
}


def words(text):
    return re.findall(r"[a-z']+", str(text).lower())


def has_negation(text):
    return any(w in NEGATIONS or w.endswith("n't") for w in words(text))


def overlap(premise, hypothesis):
    """Share of the hypothesis's distinct words that also occur in the premise."""
    hypothesis_words = set(words(hypothesis))
    return len(hypothesis_words & set(words(premise))) / len(hypothesis_words) if hypothesis_words else 0.0


def bin_of(value, bins):
    return [label for edge, label in bins if value >= edge][-1] if value >= bins[0][0] else bins[0][1]


def tag(frame):
    """`frame` (premise, hypothesis, gold_label, ...) with one column per slice axis added."""
    tagged = frame.copy()
    tagged["negation"] = ["yes" if has_negation(h) else "no" for h in frame["hypothesis"]]
    tagged["overlap"] = [bin_of(overlap(p, h), OVERLAP_BINS) for p, h in zip(frame["premise"], frame["hypothesis"])]
    tagged["hypothesis_length"] = [bin_of(len(words(h)), HYPOTHESIS_LENGTH_BINS) for h in frame["hypothesis"]]
    tagged["premise_length"] = [bin_of(len(words(p)), PREMISE_LENGTH_BINS) for p in frame["premise"]]
    return tagged


def slice_table(tagged):
    """Per axis and slice: pairs, and base/adapted accuracy with 95 % Wilson intervals."""
    rows = []
    for axis, (_, values) in AXES.items():
        for value in values:
            group = tagged[tagged[axis] == value]
            if not len(group):
                continue
            row = {"axis": axis, "slice": value, "n": len(group)}
            for model in ("base", "adapted"):
                right = int((group[f"{model}_label"] == group["gold_label"]).sum())
                low, high = wilson_interval(right, len(group))
                row |= {f"{model}_right": right, f"{model}_accuracy": right / len(group),
                        f"{model}_low": low, f"{model}_high": high}
            rows.append(row)
    return pd.DataFrame(rows)
