"""reports/report.md: headline, findings computed from the tables, figures, slices and examples.

Every finding cites the table or figure it rests on. A comparison whose 95 % interval includes zero
says so, rather than claiming a difference.
"""
from . import evidence
from .evidence import p_value, pct
from .slices import AXES
from .snli import LABELS
from .stats import confusion_matrix, difference_ci

FIGURES = {"confusion": "figures/confusion.png", "predicted": "figures/predicted_labels.png",
           "slices": "figures/slice_accuracy.png"}


def _cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def _noise(low, high):
    return " The 95 % interval includes zero, so this difference may be noise." if low <= 0 <= high else ""


def tune_rows(summary, tune):
    rows = ["| fine-tuning | |", "|---|---|",
            f"| McNemar exact p (base, zero-shot vs adapted) | {p_value(summary['mcnemar_p'])} |"]
    if tune:
        memory = tune["memory"]
        gpu = memory.get("gpu_peak_allocated_gib")
        rows += [f"| fine-tune wall time | {tune['train_seconds']:.1f} s ({tune['steps']} steps, "
                 f"{tune.get('processes', 1)} process(es)) |",
                 f"| tokens/s (non-padding) | {tune['tokens_per_s']:,.0f} |",
                 "| peak memory | " + (f"GPU {gpu:.1f} GiB allocated, " if gpu is not None else "")
                 + f"CPU {memory['cpu_peak_rss_gib']:.1f} GiB RSS |",
                 f"| trainable / total params | {tune['params']['trainable']:,} / {tune['params']['total']:,} "
                 f"({tune['params']['trainable_pct']:.2f} %) |"]
    return rows


def outcome_rows(summary, shots):
    against = summary["against_strongest"]
    strongest = evidence.model_name(against["reference"], shots)
    rows = [f"| outcome | reference → adapted | against base, zero-shot | against the strongest base ({strongest}) |",
            "|---|---|---|---|"]
    for outcome, change in (("corrected", "wrong → right"), ("not_corrected", "wrong → wrong"),
                            ("regressed", "right → wrong"), ("both_right", "right → right")):
        rows.append(f"| {outcome.replace('_', ' ')} | {change} | {summary['counts'][outcome]:,} | "
                    f"{against['counts'][outcome]:,} |")
    return rows


def findings(joined, summary, table, shots):
    counts = summary["counts"]
    gain = summary["adapted_accuracy"] - summary["base_accuracy"]
    verdict = "significant" if summary["mcnemar_p"] < 0.05 else "within noise (not significant at 5 %)"
    p_text = ("" if summary["mcnemar_p"] == 0 else "= ") + p_value(summary["mcnemar_p"])
    lines = [f"- Accuracy went from {pct(summary['base_accuracy'])} to {pct(summary['adapted_accuracy'])} "
             f"({gain * 100:+.1f} points). The change is {verdict}: McNemar p {p_text} "
             f"(Table 1). Fine-tuning corrected {counts['corrected']:,} pairs and broke {counts['regressed']:,} "
             f"that the base had right (Table 2).", *evidence.findings(summary, shots)]
    top_label, top_share = max(((p, (joined["base_label"] == p).mean()) for p in LABELS), key=lambda x: x[1])
    if top_share >= evidence.ONE_LABEL:
        gold_share = (joined["gold_label"] == top_label).mean()
        lines.append(f"- The base model answered \"{top_label}\" for {pct(top_share)} of pairs (Figure 2). Its "
                     f"accuracy is therefore about the share of {top_label} pairs ({pct(gold_share)}): zero-shot, "
                     f"it had not picked up the task.")
    base, adapted = (confusion_matrix(joined["gold_label"], joined[f"{m}_label"]) for m in ("base", "adapted"))
    errors = [(g, p) for g in LABELS for p in LABELS if g != p]
    fixed = max(errors, key=lambda e: base[e[0]][e[1]] - adapted[e[0]][e[1]])
    lines.append(f"- The error type that shrank most: gold {fixed[0]} predicted as {fixed[1]}, "
                 f"from {base[fixed[0]][fixed[1]]:,} to {adapted[fixed[0]][fixed[1]]:,} pairs (Figure 1).")
    remaining = sum(adapted[g][p] for g, p in errors)
    if remaining:
        worst = max(errors, key=lambda e: adapted[e[0]][e[1]])
        count = adapted[worst[0]][worst[1]]
        lines.append(f"- Of the {remaining:,} errors left after fine-tuning, {count:,} "
                     f"({pct(count / remaining)}) are gold {worst[0]} predicted as {worst[1]} (Figure 1).")
    for axis, (title, _) in AXES.items():
        rows = table[table["axis"] == axis]
        if len(rows) < 2:
            continue
        low_row = rows.loc[rows["adapted_accuracy"].idxmin()]
        high_row = rows.loc[rows["adapted_accuracy"].idxmax()]
        diff, lo, hi = difference_ci(high_row["adapted_right"], high_row["n"], low_row["adapted_right"], low_row["n"])
        lines.append(f"- By {title}, the adapted model is weakest on {low_row['slice']} "
                     f"({pct(low_row['adapted_accuracy'])}, n = {low_row['n']:,}) and strongest on "
                     f"{high_row['slice']} ({pct(high_row['adapted_accuracy'])}, n = {high_row['n']:,}): "
                     f"{diff * 100:.1f} points apart (95 % CI {lo * 100:.1f} to {hi * 100:.1f}; Table 3, Figure 3)."
                     + _noise(lo, hi))
    return lines


def slice_rows(table):
    rows = ["| axis | slice | pairs | base accuracy (95 % CI) | adapted accuracy (95 % CI) |", "|---|---|---|---|---|"]
    for r in table.itertuples():
        rows.append(f"| {AXES[r.axis][0]} | {r.slice} | {r.n:,} | {pct(r.base_accuracy)} ({pct(r.base_low)} – "
                    f"{pct(r.base_high)}) | {pct(r.adapted_accuracy)} ({pct(r.adapted_low)} – {pct(r.adapted_high)}) |")
    return rows


def transition_rows(joined):
    rows = ["| gold | base → adapted | pairs | share of gold |", "|---|---|---|---|"]
    groups = joined.groupby(["gold_label", "base_label", "adapted_label"]).size()
    for gold in LABELS:
        if gold not in groups.index.get_level_values(0):
            continue
        for (base, adapted), count in groups[gold].sort_values(ascending=False).items():
            marks = ("✓" if base == gold else "✗") + " → " + ("✓" if adapted == gold else "✗")
            rows.append(f"| {gold} | {base} → {adapted} ({marks}) | {count:,} | {pct(count / groups[gold].sum())} |")
    return rows


def example_rows(sample):
    def scores(row, model):
        values = [getattr(row, f"{model}_score_{label}", None) for label in LABELS]
        return "/".join(f"{v:.2f}" for v in values) if None not in values else "–"

    control = "control_label" in sample
    rows = ["| row | premise | hypothesis | gold | base | adapted | " + ("control | " if control else "")
            + "tags | scores e/n/c: base; adapted |", "|---|---|---|---|---|---|---|---|" + ("---|" if control else "")]
    for r in sample.itertuples():
        tags = ", ".join(f"{axis.replace('_', ' ')}: {getattr(r, axis)}" for axis in AXES if axis != "gold_label")
        rows.append(f"| {r.idx} | {_cell(r.premise)} | {_cell(r.hypothesis)} | {r.gold_label} | {r.base_label} | "
                    f"{r.adapted_label} | " + (f"{r.control_label} | " if control else "")
                    + f"{tags} | {scores(r, 'base')}; {scores(r, 'adapted')} |")
    return rows


def references(summary, shots):
    scored = [what for model, what in (("calibrated", "calibrated (its label scores corrected by its label prior "
                                                      "on content-free inputs)"),
                                       ("kshot", f"with {shots} training pairs in the prompt"))
              if model in summary["models"]]
    return f"The base is also scored {' and '.join(scored)}." if scored else ""


def render(joined, summary, table, tune, per_kind, seed, shots, data_warnings=()):
    warned = ["## Warnings about the data", "", *(f"- {w}" for w in data_warnings), ""] if data_warnings else []
    control = (["## Table 4: what the premise adds (the hypothesis-only control)", "",
                "The control is the same fine-tune with the premise withheld from every prompt, scored on the same "
                "pairs. A pair it gets right is solvable without the premise.", "", *evidence.control_rows(summary),
                ""] if "control_split" in summary else [])
    lines = ["# What fine-tuning changed", "",
             f"{summary['n']:,} evaluation pairs, scored by the same 4-bit base model with and without the LoRA "
             "adapter. Scores are log-likelihoods of each label's verbalizer (e/n/c = entailment/neutral/"
             "contradiction). " + references(summary, shots), "", *warned,
             "## Findings", "", *findings(joined, summary, table, shots), "",
             "## Table 1: headline", "", *evidence.model_rows(summary, shots), "", *tune_rows(summary, tune), "",
             "## Table 2: outcomes", "", *outcome_rows(summary, shots), "",
             "## Figure 1: confusion matrices, base and adapted", "",
             f"![confusion matrices]({FIGURES['confusion']})", "",
             "## Figure 2: labels predicted", "", f"![predicted labels]({FIGURES['predicted']})", "",
             "## Transitions by gold label", "", *transition_rows(joined), "",
             "## Table 3: accuracy by slice", "",
             "Negation: the hypothesis has not/no/never/nobody/nothing/none/nowhere/neither/nor/without/cannot or "
             "a word ending in n't. Overlap: share of the hypothesis's distinct words found in the premise.", "",
             *slice_rows(table), "",
             "## Figure 3: accuracy by slice", "", f"![accuracy by slice]({FIGURES['slices']})", "", *control]
    for title, group in evidence.example_groups(joined):
        sample = group.sample(n=min(per_kind, len(group)), random_state=seed).sort_values("idx")
        lines += ["", f"## {title} ({len(group)} pairs, {len(sample)} shown)", ""]
        if len(sample):
            lines += example_rows(sample)
    return "\n".join(lines) + "\n"
