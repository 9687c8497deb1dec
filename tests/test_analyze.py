"""Outcome counts, McNemar, the baselines' gains, the control's split and the report, on crafted
predictions; the interval formulas."""
import pandas as pd
import pytest

from stages.analyze import write_report
from stages.lib import comparison, slices
from stages.lib.errors import PipelineError
from stages.lib.stats import classification, mcnemar_exact, paired_difference_ci, wilson_interval
from tests.conftest import committed


def predictions(pred):
    gold = ["entailment", "neutral", "contradiction", "entailment", "neutral", "contradiction"]
    return pd.DataFrame({"idx": range(6), "premise": "p", "hypothesis": "h", "gold_label": gold,
                         "predicted_label": pred})


def join_predictions(base, adapted, control=None):
    return comparison.join_predictions(base, adapted, control, "data/predictions")


def summarize(joined):
    return comparison.summarize(joined)


def test_outcomes_counts_and_report(tmp_path):
    base = predictions(["entailment", "entailment", "entailment", "neutral", "neutral", "entailment"])
    adapted = predictions(["entailment", "neutral", "contradiction", "neutral", "contradiction", "entailment"])
    joined = join_predictions(base, adapted)
    summary = summarize(joined)
    assert summary["counts"] == {"corrected": 2, "not_corrected": 2, "regressed": 1, "both_right": 1}
    assert summary["base_accuracy"] == pytest.approx(2 / 6) and summary["adapted_accuracy"] == pytest.approx(3 / 6)
    assert summary["mcnemar_p"] == pytest.approx(1.0)
    write_report(joined, summary, committed("analyze"), 3, tmp_path)
    text = (tmp_path / "report.md").read_text()
    for heading in ("# What fine-tuning changed", "## Findings", "## Table 1: headline", "## Table 2: outcomes",
                    "## Figure 1: confusion", "## Figure 2: labels predicted", "## Transitions by gold label",
                    "## Table 3: accuracy by slice", "## Figure 3", "## Corrected (2 pairs",
                    "## Not corrected (2 pairs", "## Regressed (1 pairs"):
        assert heading in text
    for figure in ("confusion.png", "predicted_labels.png", "slice_accuracy.png"):
        assert (tmp_path / "figures" / figure).read_bytes().startswith(b"\x89PNG")
    assert "Warnings about the data" not in text
    assert "Table 4" not in text and "solvable without the premise" not in text  # no control: no split


def test_data_warnings_open_the_report(tmp_path, monkeypatch):
    from stages import analyze

    warning = "3 of the 24 training pairs also occur in the evaluation set"
    monkeypatch.setattr(analyze, "read_metrics", lambda stage: {"warnings": {"train_pairs_in_eval": warning}}
                        if stage == "prepare_data" else None)  # as prepare_data's details.json says
    joined = join_predictions(predictions(["entailment"] * 6), predictions(["neutral"] * 6))
    write_report(joined, summarize(joined), committed("analyze"), 3, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert text.index("## Warnings about the data") < text.index("## Findings") and f"- {warning}" in text


def test_slices_of_crafted_pairs():
    frame = pd.DataFrame({"premise": ["A man is sleeping on a bench in the park today.", "Two dogs run."],
                          "hypothesis": ["The man isn't awake.", "Nobody is outside in the cold rain tonight at all."]})
    tagged = slices.tag(frame)
    assert list(tagged["negation"]) == ["yes", "yes"]
    # "the", "man" of {"the", "man", "isn't", "awake"} occur in the premise; nothing of the second.
    assert list(tagged["overlap"]) == ["50–75 %", "0–25 %"]
    assert list(tagged["hypothesis_length"]) == ["1–5 words", "9–12 words"]
    assert list(tagged["premise_length"]) == ["11–15 words", "1–10 words"]  # 11 words, 3 words
    assert slices.overlap("A cat.", "a cat") == 1.0 and slices.tag(frame.assign(hypothesis="No.")).negation[0] == "yes"
    assert slices.has_negation("He never sleeps") and not slices.has_negation("Nothingness is a word")


def test_findings_flag_differences_whose_interval_includes_zero(tmp_path):
    # Two hypothesis-length slices with 3/4 and 2/4 right: a 25-point gap on 4 pairs each is noise.
    gold = ["entailment"] * 8
    hypotheses = ["A b c."] * 4 + ["A b c d e f g h i j k l m n."] * 4
    adapted = ["entailment", "entailment", "entailment", "neutral", "entailment", "entailment", "neutral", "neutral"]

    def frame(pred):
        return pd.DataFrame({"idx": range(8), "premise": "A b c.", "hypothesis": hypotheses, "gold_label": gold,
                             "predicted_label": pred})

    joined = join_predictions(frame(["neutral"] * 8), frame(adapted))
    write_report(joined, summarize(joined), committed("analyze"), 3, tmp_path)
    lines = (tmp_path / "report.md").read_text().splitlines()
    length_line = next(line for line in lines if line.startswith("- By hypothesis length"))
    assert "25.0 points apart" in length_line and "may be noise" in length_line
    claims = [line for line in lines if "points apart" in line]
    for line in claims:  # every claimed gap either excludes zero or says it may be noise
        low = float(line.split("95 % CI ")[1].split(" to ")[0])
        assert low > 0 or "may be noise" in line


def test_mismatched_prediction_files_are_refused():
    with pytest.raises(PipelineError, match="same pairs"):
        join_predictions(predictions(["entailment"] * 6), predictions(["entailment"] * 6).iloc[::-1])


def test_mcnemar_exact_matches_the_binomial_test():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625)  # 2 * 0.5 ** 5
    assert mcnemar_exact(1, 9) == pytest.approx(0.021484375)  # 2 * 11 / 1024
    assert 0 <= mcnemar_exact(626, 5142) < 1e-300


def test_wilson_interval_and_classification():
    low, high = wilson_interval(81, 100)
    assert (round(low, 4), round(high, 4)) == (0.7222, 0.8749)
    metrics = classification([0, 1, 2, 2], [0, 2, 2, 2])
    assert metrics["accuracy"] == 0.75
    assert metrics["confusion"]["neutral"]["contradiction"] == 1
    assert metrics["predicted"] == {"entailment": 1, "neutral": 0, "contradiction": 3}
    assert metrics["per_class"]["contradiction"]["precision"] == pytest.approx(2 / 3)


GOLD = ["entailment", "neutral", "contradiction"] * 4


def labels(right, wrong_as=None):
    """Gold where `right` holds the pair's idx, else another label (`wrong_as` or the next label)."""
    order = ["entailment", "neutral", "contradiction"]
    return [g if i in right else (wrong_as or order[(order.index(g) + 1) % 3]) for i, g in enumerate(GOLD)]


def crafted():
    """12 pairs: base always "contradiction" (4 right), calibrated 6, 3-shot 5, adapted 10, control 5."""
    base = pd.DataFrame({"idx": range(12), "premise": "p", "hypothesis": "h", "gold_label": GOLD,
                         "predicted_label": "contradiction",
                         "calibrated_predicted_label": labels({0, 1, 2, 3, 4, 5}),
                         "kshot_predicted_label": labels({0, 2, 5, 8, 11}, wrong_as="contradiction")})
    adapted = base[["idx", "premise", "hypothesis", "gold_label"]].assign(
        predicted_label=labels(set(range(12)) - {0, 11}))
    control = adapted.assign(predicted_label=labels({1, 2, 3, 4, 9}))
    return base, adapted, control


def test_baselines_gains_and_the_control_split():
    joined = join_predictions(*crafted())
    summary = summarize(joined)
    assert {m: round(s["accuracy"] * 12) for m, s in summary["models"].items()} == {
        "base": 4, "calibrated": 6, "kshot": 5, "adapted": 10, "control": 5}
    assert summary["counts"] == {"corrected": 7, "not_corrected": 1, "regressed": 1, "both_right": 3}
    assert summary["gains"]["calibrated"]["points"] == pytest.approx(2 / 12)  # 4 only calibrated, 2 only base
    assert summary["gains"]["kshot"]["points"] == pytest.approx(1 / 12)
    assert summary["gains"]["adapted"]["points"] == pytest.approx(6 / 12)
    against = summary["against_strongest"]
    assert against["reference"] == "calibrated" and against["accuracy_gain"] == pytest.approx(4 / 12)
    assert against["counts"] == {"corrected": 5, "not_corrected": 1, "regressed": 1, "both_right": 5}
    split = summary["control_split"]
    assert (split["corrected"]["n"], split["corrected"]["control_right"]) == (7, 4)
    assert (split["not_corrected"]["control_right"], split["both_right"]["control_right"]) == (0, 1)
    low, high = split["corrected"]["ci95"].values()
    assert (low, high) == wilson_interval(4, 7)


def test_the_report_shows_every_baseline_the_control_and_their_findings(tmp_path):
    joined = join_predictions(*crafted())
    write_report(joined, summarize(joined), committed("analyze"), 3, tmp_path)
    text = (tmp_path / "report.md").read_text()
    lines = text.splitlines()
    for row in ("| base, zero-shot | 33.3 %", "| base, calibrated | 50.0 %", "| base, 3-shot | 41.7 %",
                "| adapted | 83.3 %", "| control: hypothesis only | 41.7 %",
                "| corrected | wrong → right | 7 | 5 |", "| regressed | right → wrong | 1 | 1 |",
                "| corrected | 7 | 4 (57.1 %,", "| not corrected | 1 | 0 (0.0 %,"):
        assert any(line.startswith(row) for line in lines), row
    assert "against the strongest base (base, calibrated)" in text and "## Table 4: what the premise adds" in text
    finding = next(line for line in lines if line.startswith("- Calibration alone"))
    # +16.7 points on 12 pairs: 33.3 % of fine-tuning's +50 points, and an interval that includes zero
    assert "from 33.3 % to 50.0 %: +16.7 points" in finding and "33.3 % of fine-tuning's gain" in finding
    assert "may be noise" in finding
    kshot = next(line for line in lines if line.startswith("- 3 examples in the prompt took the base from 33.3 % to "
                                                          "41.7 %"))
    assert 'It still answered "contradiction" for 91.7 % of pairs' in kshot  # 11 of 12: one label, said so
    assert "still answered" not in finding  # calibrated: 6 of 12 are contradiction
    assert any("Against the strongest base reference (base, calibrated, 50.0 %), fine-tuning adds +33.3 points: it "
               "corrected 5 pairs" in line for line in lines)
    assert any("reached 41.7 %" in line and "not clear of chance" in line for line in lines)
    assert any(line.startswith("- Of the 7 corrected pairs, 4 (57.1 %") and "the other 3 needed it" in line
               for line in lines)
    for heading in ("## Corrected, solvable without the premise (4 pairs", "## Corrected, needing the premise (3 pairs",
                    "## Not corrected, solvable without the premise (0 pairs",
                    "## Not corrected, needing the premise (1 pairs", "## Regressed (1 pairs"):
        assert heading in text, heading
    assert "| row | premise | hypothesis | gold | base | adapted | control |" in text


def test_a_control_clear_of_chance_is_said_to_use_the_hypothesis_alone(tmp_path):
    base, adapted, control = crafted()
    many = 30  # the same 12 pairs 30 times: 5/12 right is then clear of 1/3 only if the interval says so
    frames = [pd.concat([f] * many, ignore_index=True).assign(idx=range(12 * many)) for f in (base, adapted)]
    control = pd.concat([adapted.assign(predicted_label=labels(set(range(12)) - {0, 1, 2}))] * many,
                        ignore_index=True).assign(idx=range(12 * many))
    summary = summarize(join_predictions(*frames, control))
    assert summary["models"]["control"]["ci95"]["low"] > 1 / 3
    text = "\n".join(comparison_findings(summary))
    assert "above chance (33.3 %), so the hypotheses alone give labels away" in text


def comparison_findings(summary):
    from stages.lib.evidence import findings

    return findings(summary, 3)


def test_paired_difference_interval():
    diff, low, high = paired_difference_ci([True, True, False, False], [True, False, True, True])
    assert diff == pytest.approx(0.25)  # 2 pairs only second right, 1 only first: (2 - 1) / 4
    half = 1.959964 * ((3 / 4 - 0.25 ** 2) / 4) ** 0.5
    assert (low, high) == pytest.approx((0.25 - half, 0.25 + half))
    assert paired_difference_ci([True] * 5, [True] * 5) == (0.0, 0.0, 0.0)
