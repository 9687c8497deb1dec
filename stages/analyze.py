"""analyze: what fine-tuning changed, pair by pair, and what explains it.

Joins the predictions of the base (raw, calibrated, k-shot), the adapted model and, when on, the
hypothesis-only control (comparison.py): outcomes against the raw and the strongest base (corrected,
not corrected, regressed, both right) with McNemar's exact test, each model's gain with a paired
interval, and how many of each outcome's pairs the control solves without the premise. Tags every
pair with its slices and writes reports/ (report.md with findings, tables and seeded examples;
figures/*.png) and metrics/analyze/.
"""
import pandas as pd

from stages.lib import figures, params, slices
from stages.lib.comparison import join_predictions, summarize
from stages.lib.errors import cli, run_as_program
from stages.lib.files import atomic_dir
from stages.lib.metrics import read_metrics, write_metrics
from stages.lib.paths import PREDICTIONS_DIR, REPORT_DIR
from stages.lib.report import FIGURES, render


def write_report(joined, summary, cfg, shots, directory):
    tagged = slices.tag(joined)
    table = slices.slice_table(tagged)
    (directory / "figures").mkdir()
    figures.confusion(joined, directory / FIGURES["confusion"])
    figures.predicted_shares(joined, directory / FIGURES["predicted"])
    figures.slice_accuracy(table, directory / FIGURES["slices"])
    data_warnings = list(((read_metrics("prepare_data") or {}).get("warnings") or {}).values())
    text = render(tagged, summary, table, read_metrics("finetune"), cfg.examples_per_kind, cfg.seed, shots,
                  data_warnings)
    (directory / "report.md").write_text(text, encoding="utf-8")
    return table


def read_predictions():
    """(base, adapted, control or None while the control is off)."""
    base, adapted, control = (pd.read_csv(PREDICTIONS_DIR / f"{name}.csv") for name in ("base", "adapted", "control"))
    return base, adapted, control if len(control) else None


@cli
def main():
    cfg, shots = params.load("analyze"), params.load("baselines").shots
    joined = join_predictions(*read_predictions(), PREDICTIONS_DIR)
    summary = summarize(joined)
    with atomic_dir(REPORT_DIR) as staging:
        table = write_report(joined, summary, cfg, shots, staging)
    summary["adapted_accuracy_by_slice"] = {f"{r.axis}={r.slice}": r.adapted_accuracy for r in table.itertuples()}
    headline = {key: summary[key] for key in ("counts", "accuracy_gain", "mcnemar_p")}
    headline["against_strongest"] = {key: summary["against_strongest"][key] for key in ("counts", "accuracy_gain")}
    if "control_split" in summary:
        headline["corrected_without_premise"] = summary["control_split"]["corrected"]["share"]
    write_metrics("analyze", headline, {k: v for k, v in summary.items() if k not in headline})
    print(f"analyze: {summary['counts']}, McNemar p = {summary['mcnemar_p']:.3g}; report in {REPORT_DIR / 'report.md'}")


if __name__ == "__main__":
    run_as_program(main)
