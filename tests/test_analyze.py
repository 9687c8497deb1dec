"""Outcome counts, McNemar and the report, on crafted predictions; the interval formulas."""
import pandas as pd
import pytest

from stages.analyze import join_predictions, report, summarize
from stages.lib.errors import PipelineError
from stages.lib.metrics import classification, mcnemar_exact, wilson_interval


def predictions(pred):
    gold = ["entailment", "neutral", "contradiction", "entailment", "neutral", "contradiction"]
    return pd.DataFrame({"idx": range(6), "premise": "p", "hypothesis": "h", "gold_label": gold,
                         "predicted_label": pred})


def test_outcomes_counts_and_report():
    base = predictions(["entailment", "entailment", "entailment", "neutral", "neutral", "entailment"])
    adapted = predictions(["entailment", "neutral", "contradiction", "neutral", "contradiction", "entailment"])
    joined = join_predictions(base, adapted)
    summary = summarize(joined)
    assert summary["counts"] == {"corrected": 2, "not_corrected": 2, "regressed": 1, "both_right": 1}
    assert summary["base_accuracy"] == pytest.approx(2 / 6) and summary["adapted_accuracy"] == pytest.approx(3 / 6)
    assert summary["mcnemar_p"] == pytest.approx(1.0)
    text = report(joined, summary, per_kind=5, seed=0)
    for heading in ("# What fine-tuning changed", "## Corrected (2 pairs", "## Not corrected (2 pairs",
                    "## Regressed (1 pairs"):
        assert heading in text


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
