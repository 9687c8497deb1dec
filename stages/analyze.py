"""analyze: what fine-tuning changed, pair by pair.

Joins the base and adapted predictions into four outcomes (corrected, not corrected, regressed, both
right), tests the difference with McNemar's exact test, and writes reports/report.md with a seeded
sample of each outcome and metrics/analyze/.
"""
import pandas as pd

from stages.lib import params
from stages.lib.errors import PipelineError, cli
from stages.lib.metrics import mcnemar_exact, open_live, rounded, wilson_interval
from stages.lib.paths import PREDICTIONS_DIR, REPORT_FILE
from stages.lib.snli import atomic_path

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
        "accuracy_gain": (adapted_right - base_right) / n,
        "mcnemar_p": mcnemar_exact(counts["regressed"], counts["corrected"]),
    }


def report(joined, summary, per_kind, seed):
    def accuracy_line(name, right):
        low, high = wilson_interval(right, summary["n"])
        return f"| {name} | {right / summary['n']:.2%} | {low:.2%} – {high:.2%} |"

    counts = summary["counts"]
    lines = [
        "# What fine-tuning changed", "",
        f"{summary['n']} evaluation pairs, the same 4-bit base model with and without the LoRA adapter.", "",
        "| model | accuracy | 95 % CI |", "|---|---|---|",
        accuracy_line("base", counts["regressed"] + counts["both_right"]),
        accuracy_line("adapted", counts["corrected"] + counts["both_right"]), "",
        f"McNemar exact test of base vs adapted: p = {summary['mcnemar_p']:.3g}.", "",
        "| outcome | base → adapted | pairs |", "|---|---|---|",
        f"| corrected | wrong → right | {counts['corrected']} |",
        f"| not corrected | wrong → wrong | {counts['not_corrected']} |",
        f"| regressed | right → wrong | {counts['regressed']} |",
        f"| both right | right → right | {counts['both_right']} |",
    ]
    for outcome in ("corrected", "not_corrected", "regressed"):
        group = joined[joined["outcome"] == outcome]
        sample = group.sample(n=min(per_kind, len(group)), random_state=seed).sort_values("idx")
        lines += ["", f"## {outcome.replace('_', ' ').capitalize()} ({len(group)} pairs, {len(sample)} shown)", ""]
        if len(sample):
            lines += ["| row | premise | hypothesis | gold | base | adapted |", "|---|---|---|---|---|---|"]
            lines += [f"| {r.idx} | {_cell(r.premise)} | {_cell(r.hypothesis)} | {r.gold_label} | {r.base_label} | "
                      f"{r.adapted_label} |" for r in sample.itertuples()]
    return "\n".join(lines) + "\n"


def _cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


@cli
def main():
    cfg = params.load("analyze")
    base = pd.read_csv(PREDICTIONS_DIR / "base.csv")
    adapted = pd.read_csv(PREDICTIONS_DIR / "adapted.csv")
    joined = join_predictions(base, adapted)
    summary = summarize(joined)
    with atomic_path(REPORT_FILE) as tmp:
        tmp.write_text(report(joined, summary, cfg.examples_per_kind, cfg.seed), encoding="utf-8")
    with open_live("analyze") as live:
        live.summary.update(rounded(summary))
    print(f"analyze: {summary['counts']}, McNemar p = {summary['mcnemar_p']:.3g}; report in {REPORT_FILE}")


if __name__ == "__main__":
    main()
