"""The report's evidence about the gain: how much of it the stronger base references reach without
training, and how much of it the hypothesis alone explains (the control). Tables and findings, each
finding citing its table and saying when an interval includes zero."""

NAMES = {"base": "base, zero-shot", "calibrated": "base, calibrated", "kshot": "base, {shots}-shot",
         "adapted": "adapted", "control": "control: hypothesis only"}
CHANCE = 1 / 3
ONE_LABEL = 0.9  # a model giving one label to this share of pairs is said to answer one label


def pct(x):
    return f"{100 * x:.1f} %"


def p_value(p):
    return "< 1e-300" if p == 0 else f"{p:.3g}"  # exact p below float range reads 0


def model_name(model, shots):
    return NAMES[model].format(shots=shots)


def signed(share):
    """Percentage points with a sign; a rounded zero reads +0.0, never -0.0."""
    return f"{round(share * 100, 1) + 0.0:+.1f}"


def points(gain):
    low, high = gain["ci95"]["low"], gain["ci95"]["high"]
    return f"{signed(gain['points'])} points (95 % CI {signed(low)} to {signed(high)})"


def noise(gain):
    low, high = gain["ci95"]["low"], gain["ci95"]["high"]
    return " The 95 % interval includes zero, so this difference may be noise." if low <= 0 <= high else ""


def model_rows(summary, shots):
    """Table 1: every model's accuracy and macro-F1, and its gain over the raw base on the same pairs."""
    rows = ["| model | accuracy (95 % CI) | macro-F1 | against base, zero-shot |", "|---|---|---|---|"]
    for model, score in summary["models"].items():
        gain = summary["gains"].get(model)
        rows.append(f"| {model_name(model, shots)} | {pct(score['accuracy'])} ({pct(score['ci95']['low'])} – "
                    f"{pct(score['ci95']['high'])}) | {score['macro_f1']:.3f} | {points(gain) if gain else '–'} |")
    return rows


def control_rows(summary):
    """Table 4: of each outcome's pairs, how many the hypothesis-only control gets right."""
    rows = ["| outcome (against base, zero-shot) | pairs | control right: solvable without the premise (95 % CI) |",
            "|---|---|---|"]
    for outcome, split in summary["control_split"].items():
        ci = split["ci95"]
        rows.append(f"| {outcome.replace('_', ' ')} | {split['n']:,} | {split['control_right']:,} "
                    f"({pct(split['share'])}, {pct(ci['low'])} – {pct(ci['high'])}) |")
    return rows


def findings(summary, shots):
    lines = []
    adapted_gain = summary["gains"]["adapted"]["points"]
    base = summary["models"]["base"]["accuracy"]
    for model, what in (("calibrated", "Calibration alone"), ("kshot", f"{shots} examples in the prompt")):
        if model not in summary["gains"]:
            continue
        gain = summary["gains"][model]
        share = f", {pct(gain['points'] / adapted_gain)} of fine-tuning's gain" if adapted_gain > 0 else ""
        top = summary["models"][model]["most_predicted"]
        still = (f" It still answered \"{top['label']}\" for {pct(top['share'])} of pairs: the base's bias to one "
                 "label is larger than this correction." if top["share"] >= ONE_LABEL else "")
        lines.append(f"- {what} took the base from {pct(base)} to {pct(summary['models'][model]['accuracy'])}: "
                     f"{points(gain)}{share} (Table 1).{noise(gain)}{still}")
    against = summary["against_strongest"]
    if against["reference"] != "base":
        counts = against["counts"]
        verdict = "significant" if against["mcnemar_p"] < 0.05 else "not significant at 5 %"
        lines.append(f"- Against the strongest base reference ({model_name(against['reference'], shots)}, "
                     f"{pct(summary['models'][against['reference']]['accuracy'])}), fine-tuning adds "
                     f"{signed(against['accuracy_gain'])} points: it corrected {counts['corrected']:,} pairs that "
                     f"reference got wrong and broke {counts['regressed']:,} it had right (McNemar p "
                     f"{p_value(against['mcnemar_p'])}, {verdict}; Table 2).")
    if "control_split" in summary:
        control = summary["models"]["control"]
        above = control["ci95"]["low"] > CHANCE
        lines.append(f"- The control, fine-tuned and scored with the premise withheld, reached "
                     f"{pct(control['accuracy'])} ({pct(control['ci95']['low'])} – {pct(control['ci95']['high'])}; "
                     "Table 1): "
                     + ("above chance (33.3 %), so the hypotheses alone give labels away (SNLI's annotation artifacts)."
                        if above else "not clear of chance (33.3 %): the hypotheses alone gave little away."))
        for outcome, reading in (("corrected", "are solvable without the premise; the other {rest:,} needed it"),
                                 ("not_corrected", "the control gets right from the hypothesis alone, yet the "
                                                   "adapted model, which saw the premise too, did not")):
            split = summary["control_split"][outcome]
            if split["n"]:
                ci = split["ci95"]
                lines.append(f"- Of the {split['n']:,} {outcome.replace('_', ' ')} pairs, {split['control_right']:,} "
                             f"({pct(split['share'])}, 95 % CI {pct(ci['low'])} – {pct(ci['high'])}) "
                             + reading.format(rest=split["n"] - split["control_right"]) + " (Table 4).")
    return lines


def example_groups(joined):
    """(title, pairs) of the examples shown: each outcome, corrected and not corrected split by the control."""
    groups = []
    for outcome in ("corrected", "not_corrected", "regressed"):
        group = joined[joined["outcome"] == outcome]
        title = outcome.replace("_", " ").capitalize()
        if "control_right" in joined and outcome != "regressed":
            groups += [(f"{title}, solvable without the premise", group[group["control_right"]]),
                       (f"{title}, needing the premise", group[~group["control_right"]])]
        else:
            groups.append((title, group))
    return groups
