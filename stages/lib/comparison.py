"""The models compared pair by pair: outcomes of fine-tuning against a base reference, each model's
gain over the raw base with a paired interval, and the hypothesis-only control's split of the outcomes.

Models: `base` (zero-shot), `calibrated` and `kshot` (the stronger base references of evaluate_base),
`adapted`, and `control` (the adapter trained and scored without the premise), where present.
"""
import pandas as pd

from .errors import PipelineError
from .snli import LABELS
from .stats import classification, mcnemar_exact, paired_difference_ci, wilson_interval

OUTCOMES = {  # (reference right, adapted right) -> outcome
    (False, True): "corrected",
    (False, False): "not_corrected",
    (True, False): "regressed",
    (True, True): "both_right",
}
BASE_REFERENCES = ("base", "calibrated", "kshot")


def join_predictions(base, adapted, control, source):
    """One row per pair: its text, gold label, each model's label and the base's and adapted scores."""
    for name, frame in (("adapted", adapted), ("control", control)):
        if frame is not None and list(frame["idx"]) != list(base["idx"]):
            raise PipelineError(f"{source}: base.csv and {name}.csv do not hold the same pairs in the same order")
    joined = base[["idx", "premise", "hypothesis", "gold_label"]].copy()
    joined["base_label"] = base["predicted_label"]
    for name in BASE_REFERENCES[1:]:
        if f"{name}_predicted_label" in base:
            joined[f"{name}_label"] = base[f"{name}_predicted_label"]
    joined["adapted_label"] = adapted["predicted_label"]
    if control is not None:
        joined["control_label"] = control["predicted_label"]
    joined["outcome"] = outcomes(joined, "base")
    for model, frame in (("base", base), ("adapted", adapted)):
        for label in LABELS:
            if f"score_{label}" in frame:
                joined[f"{model}_score_{label}"] = frame[f"score_{label}"]
    return joined


def models(joined):
    """The models present in `joined`, in the report's order."""
    return [m for m in (*BASE_REFERENCES, "adapted", "control") if f"{m}_label" in joined]


def right(joined, model):
    return joined[f"{model}_label"] == joined["gold_label"]


def outcomes(joined, reference):
    return pd.Series([OUTCOMES[key] for key in zip(right(joined, reference), right(joined, "adapted"))],
                     index=joined.index)


def outcome_counts(outcome):
    counts = outcome.value_counts()
    return {name: int(counts.get(name, 0)) for name in OUTCOMES.values()}


def interval(low_high):
    return dict(zip(("low", "high"), low_high))


def summarize(joined):
    """Accuracies, gains over the raw base, outcomes against the raw and the strongest base, and the
    control's split; adds `outcome_vs_strongest` (and `control_right`) to `joined`."""
    n = len(joined)
    counts = outcome_counts(joined["outcome"])
    index = {label: k for k, label in enumerate(LABELS)}
    scores = {}
    for model in models(joined):
        hits = int(right(joined, model).sum())
        shares = joined[f"{model}_label"].value_counts(normalize=True)
        scores[model] = {"accuracy": hits / n, "ci95": interval(wilson_interval(hits, n)),
                         "macro_f1": classification(joined["gold_label"].map(index).tolist(),
                                                    joined[f"{model}_label"].map(index).tolist())["macro_f1"],
                         "most_predicted": {"label": shares.index[0], "share": float(shares.iloc[0])}}
    gains = {}
    for model in models(joined)[1:]:
        points, low, high = paired_difference_ci(right(joined, "base").tolist(), right(joined, model).tolist())
        gains[model] = {"points": points, "ci95": {"low": low, "high": high}}
    strongest = max((m for m in BASE_REFERENCES if m in scores), key=lambda m: scores[m]["accuracy"])
    joined["outcome_vs_strongest"] = outcomes(joined, strongest)
    against = outcome_counts(joined["outcome_vs_strongest"])
    summary = {
        "n": n, "counts": counts,
        "base_accuracy": scores["base"]["accuracy"], "adapted_accuracy": scores["adapted"]["accuracy"],
        "base_ci95": scores["base"]["ci95"], "adapted_ci95": scores["adapted"]["ci95"],
        "accuracy_gain": gains["adapted"]["points"],
        "mcnemar_p": mcnemar_exact(counts["regressed"], counts["corrected"]),
        "models": scores, "gains": gains,
        "against_strongest": {"reference": strongest, "counts": against,
                              "accuracy_gain": scores["adapted"]["accuracy"] - scores[strongest]["accuracy"],
                              "mcnemar_p": mcnemar_exact(against["regressed"], against["corrected"])},
    }
    if "control" in scores:
        joined["control_right"] = right(joined, "control")
        summary["control_split"] = {}
        for outcome in OUTCOMES.values():
            group = joined.loc[joined["outcome"] == outcome, "control_right"]
            hits = int(group.sum())
            summary["control_split"][outcome] = {"n": len(group), "control_right": hits,
                                                 "share": hits / len(group) if len(group) else 0.0,
                                                 "ci95": interval(wilson_interval(hits, len(group)))}
    return summary
