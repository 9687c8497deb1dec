"""reports/report.md: headline, findings computed from the tables, figures, slices and examples.

Every finding cites the table or figure it rests on. A comparison whose 95 % interval includes zero
says so, rather than claiming a difference.
"""
from .stats import confusion_matrix
from .slices import AXES, difference_ci
from .snli import LABELS

FIGURES = {"confusion": "figures/confusion.png", "predicted": "figures/predicted_labels.png",
           "slices": "figures/slice_accuracy.png"}


def pct(x):
    return f"{100 * x:.1f} %"


def p_value(p):
    return "< 1e-300" if p == 0 else f"{p:.3g}"  # exact p below float range reads 0


def _cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def _noise(low, high):
    return " The 95 % interval includes zero, so this difference may be noise." if low <= 0 <= high else ""


def headline(summary, tune):
    rows = ["| | base (zero-shot) | adapted |", "|---|---|---|"]
    cells = [f"{pct(summary[f'{m}_accuracy'])} ({pct(summary[f'{m}_ci95']['low'])} – "
             f"{pct(summary[f'{m}_ci95']['high'])})" for m in ("base", "adapted")]
    rows.append(f"| accuracy (95 % CI) | {cells[0]} | {cells[1]} |")
    rows.append(f"| McNemar exact p (base vs adapted) | {p_value(summary['mcnemar_p'])} | |")
    if tune:
        memory = tune["memory"]
        gpu = memory.get("gpu_peak_allocated_gib")
        rows += [f"| fine-tune wall time | {tune['train_seconds']:.1f} s ({tune['steps']} steps, "
                 f"{tune.get('processes', 1)} process(es)) | |",
                 f"| tokens/s (non-padding) | {tune['tokens_per_s']:,.0f} | |",
                 "| peak memory | " + (f"GPU {gpu:.1f} GiB allocated, " if gpu is not None else "")
                 + f"CPU {memory['cpu_peak_rss_gib']:.1f} GiB RSS | |",
                 f"| trainable / total params | {tune['params']['trainable']:,} / {tune['params']['total']:,} "
                 f"({tune['params']['trainable_pct']:.2f} %) | |"]
    return rows


def findings(joined, summary, table):
    counts = summary["counts"]
    gain = summary["adapted_accuracy"] - summary["base_accuracy"]
    verdict = "significant" if summary["mcnemar_p"] < 0.05 else "within noise (not significant at 5 %)"
    p_text = ("" if summary["mcnemar_p"] == 0 else "= ") + p_value(summary["mcnemar_p"])
    lines = [f"- Accuracy went from {pct(summary['base_accuracy'])} to {pct(summary['adapted_accuracy'])} "
             f"({gain * 100:+.1f} points). The change is {verdict}: McNemar p {p_text} "
             f"(Table 1). Fine-tuning corrected {counts['corrected']:,} pairs and broke {counts['regressed']:,} "
             f"that the base had right (Table 2)."]
    top_label, top_share = max(((p, (joined["base_label"] == p).mean()) for p in LABELS), key=lambda x: x[1])
    if top_share >= 0.9:
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

    rows = ["| row | premise | hypothesis | gold | base | adapted | tags | scores e/n/c: base; adapted |",
            "|---|---|---|---|---|---|---|---|"]
    for r in sample.itertuples():
        tags = ", ".join(f"{axis.replace('_', ' ')}: {getattr(r, axis)}" for axis in AXES if axis != "gold_label")
        rows.append(f"| {r.idx} | {_cell(r.premise)} | {_cell(r.hypothesis)} | {r.gold_label} | {r.base_label} | "
                    f"{r.adapted_label} | {tags} | {scores(r, 'base')}; {scores(r, 'adapted')} |")
    return rows


def render(joined, summary, table, tune, per_kind, seed, data_warnings=()):
    counts = summary["counts"]
    warned = ["## Warnings about the data", "", *(f"- {w}" for w in data_warnings), ""] if data_warnings else []
    lines = ["# What fine-tuning changed", "",
             f"{summary['n']:,} evaluation pairs, scored by the same 4-bit base model with and without the LoRA "
             "adapter. Scores are log-likelihoods of each label's verbalizer (e/n/c = entailment/neutral/"
             "contradiction).", "", *warned,
             "## Findings", "", *findings(joined, summary, table), "",
             "## Table 1: headline", "", *headline(summary, tune), "",
             "## Table 2: outcomes", "", "| outcome | base → adapted | pairs |", "|---|---|---|",
             f"| corrected | wrong → right | {counts['corrected']:,} |",
             f"| not corrected | wrong → wrong | {counts['not_corrected']:,} |",
             f"| regressed | right → wrong | {counts['regressed']:,} |",
             f"| both right | right → right | {counts['both_right']:,} |", "",
             "## Figure 1: confusion matrices, base and adapted", "",
             f"![confusion matrices]({FIGURES['confusion']})", "",
             "## Figure 2: labels predicted", "", f"![predicted labels]({FIGURES['predicted']})", "",
             "## Transitions by gold label", "", *transition_rows(joined), "",
             "## Table 3: accuracy by slice", "",
             "Negation: the hypothesis has not/no/never/nobody/nothing/none/nowhere/neither/nor/without/cannot or "
             "a word ending in n't. Overlap: share of the hypothesis's distinct words found in the premise.", "",
             *slice_rows(table), "",
             "## Figure 3: accuracy by slice", "", f"![accuracy by slice]({FIGURES['slices']})"]
    for outcome in ("corrected", "not_corrected", "regressed"):
        group = joined[joined["outcome"] == outcome]
        sample = group.sample(n=min(per_kind, len(group)), random_state=seed).sort_values("idx")
        lines += ["", f"## {outcome.replace('_', ' ').capitalize()} ({len(group)} pairs, {len(sample)} shown)", ""]
        if len(sample):
            lines += example_rows(sample)
    return "\n".join(lines) + "\n"
