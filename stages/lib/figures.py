"""The report's PNG figures (matplotlib, no display needed)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from .stats import confusion_matrix  # noqa: E402
from .slices import AXES  # noqa: E402
from .snli import LABELS  # noqa: E402

COLORS = {"base": "#9aa5b1", "adapted": "#2f6fdb"}


def confusion(joined, path):
    """Confusion matrices of base and adapted side by side, counts in the cells."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    for ax, model in zip(axes, ("base", "adapted")):
        confusion = confusion_matrix(joined["gold_label"], joined[f"{model}_label"])
        counts = [[confusion[g][p] for p in LABELS] for g in LABELS]
        ax.imshow(counts, cmap="Blues")
        top = max(map(max, counts)) or 1
        for i, row in enumerate(counts):
            for j, n in enumerate(row):
                ax.text(j, i, f"{n:,}", ha="center", va="center", color="white" if n > top / 2 else "black")
        ax.set_xticks(range(3), LABELS)
        ax.set_yticks(range(3), LABELS)
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        right = sum(counts[k][k] for k in range(3))
        ax.set_title(f"{model}: {right / len(joined):.1%} right")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def predicted_shares(joined, path):
    """Share of pairs given each label by each model, against the gold shares."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6), constrained_layout=True)
    width = 0.27
    for k, (name, column) in enumerate((("gold", "gold_label"), ("base", "base_label"), ("adapted", "adapted_label"))):
        shares = [(joined[column] == label).mean() for label in LABELS]
        bars = ax.bar([i + (k - 1) * width for i in range(3)], shares, width, label=name,
                      color={"gold": "#e0c36b", **COLORS}[name])
        ax.bar_label(bars, [f"{s:.0%}" for s in shares], fontsize=8)
    ax.set_xticks(range(3), LABELS)
    ax.set_ylabel("share of pairs")
    ax.set_ylim(0, 1.1)
    ax.legend(frameon=False)
    ax.set_title("Labels predicted, against the gold labels")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def slice_accuracy(table, path):
    """Accuracy with 95 % CIs per slice, base and adapted, one panel per axis."""
    fig, axes = plt.subplots(1, len(AXES), figsize=(17, 4), constrained_layout=True, sharey=True)
    for ax, (axis, (title, _)) in zip(axes, AXES.items()):
        rows = table[table["axis"] == axis].reset_index(drop=True)
        for offset, model in ((-0.15, "base"), (0.15, "adapted")):
            acc = rows[f"{model}_accuracy"]
            errors = [acc - rows[f"{model}_low"], rows[f"{model}_high"] - acc]
            ax.errorbar(rows.index + offset, acc, yerr=errors, fmt="o", capsize=3, color=COLORS[model], label=model)
        ax.set_xticks(rows.index, [f"{s}\n(n={n:,})" for s, n in zip(rows["slice"], rows["n"])], fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xlim(-0.5, len(rows) - 0.5)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("accuracy (95 % CI)")
    axes[0].legend(frameon=False, loc="lower left")
    fig.savefig(path, dpi=110)
    plt.close(fig)
