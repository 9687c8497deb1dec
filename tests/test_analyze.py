"""Outcome counts, McNemar and the report, on crafted predictions; the interval formulas."""
import pandas as pd
import pytest

from stages.analyze import join_predictions, summarize, write_report
from stages.lib import slices
from stages.lib.errors import PipelineError
from stages.lib.stats import classification, mcnemar_exact, wilson_interval
from tests.conftest import committed


def predictions(pred):
    gold = ["entailment", "neutral", "contradiction", "entailment", "neutral", "contradiction"]
    return pd.DataFrame({"idx": range(6), "premise": "p", "hypothesis": "h", "gold_label": gold,
                         "predicted_label": pred})


def test_outcomes_counts_and_report(tmp_path):
    base = predictions(["entailment", "entailment", "entailment", "neutral", "neutral", "entailment"])
    adapted = predictions(["entailment", "neutral", "contradiction", "neutral", "contradiction", "entailment"])
    joined = join_predictions(base, adapted)
    summary = summarize(joined)
    assert summary["counts"] == {"corrected": 2, "not_corrected": 2, "regressed": 1, "both_right": 1}
    assert summary["base_accuracy"] == pytest.approx(2 / 6) and summary["adapted_accuracy"] == pytest.approx(3 / 6)
    assert summary["mcnemar_p"] == pytest.approx(1.0)
    write_report(joined, summary, committed("analyze"), tmp_path)
    text = (tmp_path / "report.md").read_text()
    for heading in ("# What fine-tuning changed", "## Findings", "## Table 1: headline", "## Table 2: outcomes",
                    "## Figure 1: confusion", "## Figure 2: labels predicted", "## Transitions by gold label",
                    "## Table 3: accuracy by slice", "## Figure 3", "## Corrected (2 pairs",
                    "## Not corrected (2 pairs", "## Regressed (1 pairs"):
        assert heading in text
    for figure in ("confusion.png", "predicted_labels.png", "slice_accuracy.png"):
        assert (tmp_path / "figures" / figure).read_bytes().startswith(b"\x89PNG")
    assert "Warnings about the data" not in text


def test_data_warnings_open_the_report(tmp_path, monkeypatch):
    from stages import analyze

    warning = "3 of the 24 training pairs also occur in the evaluation set"
    monkeypatch.setattr(analyze, "stage_metrics", lambda stage: {"warnings": {"train_pairs_in_eval": warning}}
                        if stage == "prepare_data" else None)  # as prepare_data's details.json says
    joined = join_predictions(predictions(["entailment"] * 6), predictions(["neutral"] * 6))
    write_report(joined, summarize(joined), committed("analyze"), tmp_path)
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
    write_report(joined, summarize(joined), committed("analyze"), tmp_path)
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
