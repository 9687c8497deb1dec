"""prepare_data: drop pairs with no gold label, sample the training and evaluation sets.

Reads data.raw_dir/{split}.jsonl.gz; writes data/prepared/{train,eval}.jsonl (rows keep `idx`, their
line in the raw split, and file order) and metrics/prepare_data (counts per label).

Duplicates are kept and counted: SNLI pairs the same premise and hypothesis more than once, and those
rows are separate annotations. `duplicate_pairs` counts repeats within a prepared set; `train_pairs_in_eval`
counts prepared training pairs whose premise and hypothesis also occur in the prepared evaluation set.
"""
from collections import Counter

from stages.lib import params
from stages.lib.errors import PipelineError, cli, run_as_program
from stages.lib.metrics import write_metrics
from stages.lib.paths import PREPARED_DIR
from stages.lib.snli import LABELS, NO_GOLD, read_rows, split_path, stratified_sample, write_rows


def prepare(rows, size, seed, source):
    """(sampled gold rows, number of rows dropped for having no gold label)."""
    gold = [row for row in rows if row["label"] != NO_GOLD]
    if not gold:
        raise PipelineError(f"{source}: no pair has a gold label ({len(rows)} rows)")
    if size is not None and size > len(gold):
        raise PipelineError(f"{source}: asked for {size} pairs but it has only {len(gold)} with a gold label")
    return stratified_sample(gold, size, seed), len(rows) - len(gold)


def pair_keys(rows):
    return [(row["premise"].strip(), row["hypothesis"].strip()) for row in rows]


def duplicate_pairs(rows):
    keys = pair_keys(rows)
    return len(keys) - len(set(keys))


def warnings(summary):
    """What a reader of the results must know about the prepared data ({} when nothing)."""
    found = {}
    if summary["train_pairs_in_eval"]:
        found["train_pairs_in_eval"] = (f"{summary['train_pairs_in_eval']} of the {summary['train']['n']} "
                                        "training pairs also occur in the evaluation set")
    missing = [label for label, n in summary["eval"]["labels"].items() if n == 0]
    if missing:
        found["eval_labels_missing"] = (f"the evaluation set has no {' or '.join(missing)} pair: per-class "
                                        "scores and macro-F1 cover fewer classes")
    return found


def label_counts(rows):
    counts = Counter(LABELS[row["label"]] for row in rows)
    return {label: counts[label] for label in LABELS}


@cli
def main():
    cfg = params.load("data")
    if cfg.train_split == cfg.eval_split:
        raise PipelineError(f"params.yaml: data.eval_split is data.train_split ({cfg.train_split!r}): "
                            "the evaluation would score pairs the model was trained on")
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
    summary["warnings"] = warnings(summary)
    for warning in summary["warnings"].values():
        print(f"prepare_data: warning: {warning}")
    headline = {"train_pairs": summary["train"]["n"], "eval_pairs": summary["eval"]["n"],
                "train_pairs_in_eval": summary["train_pairs_in_eval"]}
    write_metrics("prepare_data", headline, summary)


if __name__ == "__main__":
    run_as_program(main)
