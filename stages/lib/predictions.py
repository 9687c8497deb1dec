"""The predictions file (data/predictions/<model>.csv), one row per evaluation pair in file order:
written by the evaluate stages, joined by analyze (comparison.py)."""
import pandas as pd

from .snli import LABELS


def predictions_frame(rows, scorings):
    """One row per pair; per scoring (name, scores, predictions) its predicted label and label scores,
    named plainly for the first scoring and prefixed with the name for the others."""
    frame = pd.DataFrame(rows, columns=["idx", "premise", "hypothesis", "label"])
    frame["gold_label"] = [LABELS[g] for g in frame["label"]]
    for k, (name, scores, predicted) in enumerate(scorings):
        prefix = f"{name}_" if k else ""
        frame[f"{prefix}predicted_label"] = [LABELS[p] for p in predicted]
        for j, label in enumerate(LABELS):
            frame[f"{prefix}score_{label}"] = [s[j] for s in scores]
    return frame.drop(columns="label")
