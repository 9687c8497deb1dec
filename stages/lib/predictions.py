"""The predictions file (data/predictions/<model>.csv), one row per evaluation pair in file order:
written by the evaluate stages, joined by analyze (comparison.py)."""
from .snli import LABELS

PAIR_COLUMNS = ["idx", "premise", "hypothesis", "gold_label"]


def scoring_columns(k, name):
    """The k-th scoring's columns, its predicted label and label scores: named plainly for the first
    scoring and prefixed with the name for the others."""
    prefix = f"{name}_" if k else ""
    return [f"{prefix}predicted_label", *(f"{prefix}score_{label}" for label in LABELS)]


def predictions_frame(rows, scorings):
    """One row per pair, then the columns of each scoring (name, scores, predictions)."""
    import pandas as pd

    frame = pd.DataFrame([[row["idx"], row["premise"], row["hypothesis"], LABELS[row["label"]]] for row in rows],
                         columns=PAIR_COLUMNS)
    for k, (name, scores, predicted) in enumerate(scorings):
        predicted_column, *score_columns = scoring_columns(k, name)
        frame[predicted_column] = [LABELS[p] for p in predicted]
        for j, column in enumerate(score_columns):
            frame[column] = [s[j] for s in scores]
    return frame


def empty_predictions(name):
    """The CSV text of a predictions file with no rows (the control's while it is off): its header,
    without importing pandas for it."""
    return ",".join(PAIR_COLUMNS + scoring_columns(0, name)) + "\n"
