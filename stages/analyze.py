"""analyze: what fine-tuning changed, pair by pair.

Joins the base and adapted predictions into four outcomes (corrected, not corrected, regressed, both
right), tests the difference with McNemar's exact test, tags every pair with its slices, and writes
reports/ (report.md with findings, tables and seeded examples; figures/*.png) and metrics/analyze/.
"""
import json

import pandas as pd

from stages.lib import figures, params, slices
from stages.lib.errors import PipelineError, cli, run_as_program
from stages.lib.files import atomic_dir
from stages.lib.metrics import METRICS_DIR, write_metrics
from stages.lib.paths import PREDICTIONS_DIR, REPORT_DIR
from stages.lib.report import FIGURES, render
from stages.lib.snli import LABELS
from stages.lib.stats import mcnemar_exact, wilson_interval

OUTCOMES = {  # (base right, adapted right) -> outcome
    (False, True): "corrected",
    (False, False): "not_corrected",
    (True, False): "regressed",
    (True, True): "both_right",
}


def join_predictions(base, adapted):
    if list(base["idx"]) != list(adapted["idx"]):
        raise PipelineError(f"{PREDICTIONS_DIR}: base.csv and adapted.csv do not hold the same pairs in the same order")
    joined = base[["idx", "premise", "hypothesis", "gold_label"]].copy()
    joined["base_label"] = base["predicted_label"]
    joined["adapted_label"] = adapted["predicted_label"]
    base_right = base["predicted_label"] == base["gold_label"]
    adapted_right = adapted["predicted_label"] == adapted["gold_label"]
    joined["outcome"] = [OUTCOMES[key] for key in zip(base_right, adapted_right)]
    for model, frame in (("base", base), ("adapted", adapted)):
        for label in LABELS:
            if f"score_{label}" in frame:
                joined[f"{model}_score_{label}"] = frame[f"score_{label}"]
    return joined


def summarize(joined):
    counts = joined["outcome"].value_counts()
    counts = {name: int(counts.get(name, 0)) for name in OUTCOMES.values()}
    n = len(joined)
    base_right = counts["regressed"] + counts["both_right"]
    adapted_right = counts["corrected"] + counts["both_right"]
    return {
        "n": n, "counts": counts,
        "base_accuracy": base_right / n, "adapted_accuracy": adapted_right / n,
        "base_ci95": dict(zip(("low", "high"), wilson_interval(base_right, n))),
        "adapted_ci95": dict(zip(("low", "high"), wilson_interval(adapted_right, n))),
        "accuracy_gain": (adapted_right - base_right) / n,
        "mcnemar_p": mcnemar_exact(counts["regressed"], counts["corrected"]),
    }


def stage_metrics(stage):
    """A stage's headline and detail metrics in one dict (None if not there): finetune's for the
    report's headline table, prepare_data's warnings about the data."""
    files = [METRICS_DIR / stage / name for name in ("metrics.json", "details.json")]
    if not all(path.is_file() for path in files):
        return None
    headline, details = (json.loads(path.read_text()) for path in files)
    return headline | details


def write_report(joined, summary, cfg, directory):
    tagged = slices.tag(joined)
    table = slices.slice_table(tagged)
    (directory / "figures").mkdir()
    figures.confusion(joined, directory / FIGURES["confusion"])
    figures.predicted_shares(joined, directory / FIGURES["predicted"])
    figures.slice_accuracy(table, directory / FIGURES["slices"])
    data_warnings = list(((stage_metrics("prepare_data") or {}).get("warnings") or {}).values())
    text = render(tagged, summary, table, stage_metrics("finetune"), cfg.examples_per_kind, cfg.seed, data_warnings)
    (directory / "report.md").write_text(text, encoding="utf-8")
    return table


@cli
def main():
    cfg = params.load("analyze")
    base = pd.read_csv(PREDICTIONS_DIR / "base.csv")
    adapted = pd.read_csv(PREDICTIONS_DIR / "adapted.csv")
    joined = join_predictions(base, adapted)
    summary = summarize(joined)
    with atomic_dir(REPORT_DIR) as staging:
        table = write_report(joined, summary, cfg, staging)
    summary["adapted_accuracy_by_slice"] = {f"{r.axis}={r.slice}": r.adapted_accuracy for r in table.itertuples()}
    headline = {key: summary[key] for key in ("counts", "accuracy_gain", "mcnemar_p")}
    write_metrics("analyze", headline, {k: v for k, v in summary.items() if k not in headline})
    print(f"analyze: {summary['counts']}, McNemar p = {summary['mcnemar_p']:.3g}; report in {REPORT_DIR / 'report.md'}")


if __name__ == "__main__":
    run_as_program(main)
