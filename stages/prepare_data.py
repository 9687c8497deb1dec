"""prepare_data: drop pairs with no gold label, sample the training and evaluation sets.

Reads data.raw_dir/{split}.jsonl.gz; writes data/prepared/{train,eval}.jsonl (rows keep `idx`, their
line in the raw split, and file order) and metrics/prepare_data (counts per label).

Duplicates are kept and counted: SNLI pairs the same premise and hypothesis more than once, and those
rows are separate annotations. `duplicate_pairs` counts repeats within a prepared set; `train_pairs_in_eval`
counts prepared training pairs whose premise and hypothesis also occur in the prepared evaluation set.
"""
from collections import Counter

from stages.lib import params
from stages.lib.errors import PipelineError, cli
from stages.lib.metrics import open_live
from stages.lib.paths import PREPARED_DIR
from stages.lib.snli import LABELS, NO_GOLD, read_rows, split_path, stratified_sample, write_rows


def prepare(rows, size, seed, source):
    """(sampled gold rows, number of rows dropped for having no gold label)."""
    gold = [row for row in rows if row["label"] != NO_GOLD]
    if size is not None and size > len(gold):
        raise PipelineError(f"{source}: asked for {size} pairs but it has only {len(gold)} with a gold label")
    return stratified_sample(gold, size, seed), len(rows) - len(gold)


def pair_keys(rows):
    return [(row["premise"].strip(), row["hypothesis"].strip()) for row in rows]


def duplicate_pairs(rows):
    keys = pair_keys(rows)
    return len(keys) - len(set(keys))


def label_counts(rows):
    counts = Counter(LABELS[row["label"]] for row in rows)
    return {label: counts[label] for label in LABELS}


@cli
def main():
    cfg = params.load("data")
    summary, prepared = {}, {}
    for name, split, size in (("train", cfg.train_split, cfg.train_size), ("eval", cfg.eval_split, cfg.eval_size)):
        source = split_path(cfg.raw_dir, split)
        rows, dropped = prepare(read_rows(source), size, cfg.seed, source)
        write_rows(rows, PREPARED_DIR / f"{name}.jsonl")
        prepared[name] = rows
        summary[name] = {"split": split, "n": len(rows), "dropped_no_gold": dropped, "labels": label_counts(rows),
                         "duplicate_pairs": duplicate_pairs(rows)}
        print(f"{name}: {len(rows)} pairs from {source} ({dropped} without a gold label dropped, "
              f"{summary[name]['duplicate_pairs']} duplicate pairs kept)")
    eval_keys = set(pair_keys(prepared["eval"]))
    summary["train_pairs_in_eval"] = sum(key in eval_keys for key in pair_keys(prepared["train"]))
    with open_live("prepare_data") as live:
        live.summary.update(summary)


if __name__ == "__main__":
    main()
