"""The statistics the stages report: intervals, tests, classification scores."""
import math

from .snli import LABELS


def wilson_interval(successes, n, z=1.959964):
    """95 % Wilson score interval of a proportion (sound near 0 and 1, unlike the normal one)."""
    if n == 0:
        return (0.0, 0.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # At p = 0 or 1 the bound equals p up to rounding; clamp so it never lands on the wrong side.
    return (max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


def difference_ci(right1, n1, right2, n2):
    """p1 - p2 with Newcombe's 95 % interval (from the two Wilson intervals); unpaired samples."""
    p1, p2 = right1 / n1, right2 / n2
    (l1, u1), (l2, u2) = wilson_interval(right1, n1), wilson_interval(right2, n2)
    diff = p1 - p2
    return diff, diff - ((p1 - l1) ** 2 + (u2 - p2) ** 2) ** 0.5, diff + ((u1 - p1) ** 2 + (p2 - l2) ** 2) ** 0.5


def paired_difference_ci(first_right, second_right, z=1.959964):
    """second's accuracy minus first's on the same pairs, with a 95 % interval for paired outcomes
    (the normal interval of the mean per-pair difference, each -1, 0 or 1)."""
    n = len(first_right)
    only_second = sum(b and not a for a, b in zip(first_right, second_right))
    only_first = sum(a and not b for a, b in zip(first_right, second_right))
    diff = (only_second - only_first) / n
    half = z * math.sqrt(max(0.0, (only_second + only_first) / n - diff * diff) / n)
    return diff, diff - half, diff + half


def mcnemar_exact(only_first_right, only_second_right):
    """Two-sided exact McNemar p-value from the two discordant counts (a binomial test at 1/2)."""
    n = only_first_right + only_second_right
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_first_right, only_second_right) + 1))
    return min(1.0, 2 * tail / 2 ** n)  # exact big-integer arithmetic, then one rounding


def confusion_matrix(gold, predicted):
    """{gold label: {predicted label: pairs}} from two sequences of label names."""
    confusion = {g: {p: 0 for p in LABELS} for g in LABELS}
    for g, p in zip(gold, predicted):
        confusion[g][p] += 1
    return confusion


def classification(gold, predicted):
    """Accuracy with its CI, macro-F1, per-class P/R/F1, confusion matrix and predicted shares."""
    n = len(gold)
    correct = sum(g == p for g, p in zip(gold, predicted))
    low, high = wilson_interval(correct, n)
    confusion = confusion_matrix([LABELS[g] for g in gold], [LABELS[p] for p in predicted])
    per_class = {}
    for label in LABELS:
        tp = confusion[label][label]
        predicted_n = sum(confusion[g][label] for g in LABELS)
        gold_n = sum(confusion[label].values())
        precision = tp / predicted_n if predicted_n else 0.0
        recall = tp / gold_n if gold_n else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1}
    return {
        "n": n,
        "accuracy": correct / n if n else 0.0,
        "accuracy_ci95": {"low": low, "high": high},
        "macro_f1": sum(c["f1"] for c in per_class.values()) / len(LABELS),
        "per_class": per_class,
        "confusion": confusion,
        "predicted": {p: sum(confusion[g][p] for g in LABELS) for p in LABELS},
    }
