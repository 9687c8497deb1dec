"""Fill data.raw_dir with SNLI as {train,validation,test}.jsonl.gz, from the hub or a local copy.

    python -m stages.fetch_data                      # Hugging Face hub, pinned revision
    python -m stages.fetch_data --from ../shared/data/snli

A local copy may be this layout (gzip JSON Lines), the original SNLI 1.0 release
(snli_1.0_{train,dev,test}.jsonl or .txt) or the hub's parquet files. Every source is written in the
same byte-stable form, so DVC sees the same hash for the same data.
"""
import argparse
import csv
import gzip
import json
from pathlib import Path

from stages.lib import params
from stages.lib.errors import PipelineError, cli, run_as_program
from stages.lib.files import atomic_dir
from stages.lib.model_source import hub_reachable
from stages.lib.snli import LABELS, NO_GOLD, read_rows

HUB_ID = "stanfordnlp/snli"
HUB_REVISION = "cdb5c3d5eed6ead6e5a341c8e56e669bb666725b"
SPLITS = ("train", "validation", "test")
ORIGINAL_NAMES = {"train": "train", "validation": "dev", "test": "test"}  # SNLI 1.0 file names
GOLD = {name: i for i, name in enumerate(LABELS)} | {"-": NO_GOLD}


def write_split(rows, path):
    """gzip JSON Lines with a fixed timestamp, so equal rows give equal bytes."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
        for row in rows:
            line = {"premise": row["premise"], "hypothesis": row["hypothesis"], "label": row["label"]}
            out.write((json.dumps(line, ensure_ascii=False) + "\n").encode())


def original_rows(path):
    """Rows of an SNLI 1.0 .jsonl or .txt file, labels mapped to 0/1/2/-1."""
    if path.suffix == ".txt":
        with open(path, encoding="utf-8", newline="") as f:
            records = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    else:
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
    rows = []
    for line_no, rec in enumerate(records, 2 if path.suffix == ".txt" else 1):
        if rec.get("gold_label") not in GOLD:
            raise PipelineError(f"{path}: line {line_no}: unknown gold_label {rec.get('gold_label')!r}")
        rows.append({"premise": rec["sentence1"], "hypothesis": rec["sentence2"], "label": GOLD[rec["gold_label"]]})
    return rows


def local_rows(source, split):
    """One split from a local copy in any of the accepted layouts."""
    ours = source / f"{split}.jsonl.gz"
    if ours.is_file():
        return read_rows(ours)
    for suffix in (".jsonl", ".txt"):
        original = source / f"snli_1.0_{ORIGINAL_NAMES[split]}{suffix}"
        if original.is_file():
            return original_rows(original)
    parquet = sorted(source.glob(f"**/{split}-*.parquet"))
    if parquet:
        import pandas as pd

        frame = pd.concat([pd.read_parquet(p) for p in parquet], ignore_index=True)
        return frame[["premise", "hypothesis", "label"]].to_dict("records")
    raise PipelineError(f"{source}: no {split} split ({split}.jsonl.gz, snli_1.0_{ORIGINAL_NAMES[split]}.jsonl/.txt "
                        f"or {split}-*.parquet)")


def hub_rows(split):
    import datasets
    from huggingface_hub import constants

    offline_hint = "offline, point at a local copy: make repro SNLI=DIR"
    if not constants.HF_HUB_OFFLINE and not hub_reachable():
        raise PipelineError(f"cannot reach the Hugging Face hub for {HUB_ID}; {offline_hint}")
    try:
        data = datasets.load_dataset(HUB_ID, revision=HUB_REVISION, split=split)
    except Exception as err:  # offline shows up as several error types, all meaning "not reachable"
        raise PipelineError(f"cannot download {HUB_ID} from the Hugging Face hub ({type(err).__name__}); "
                            f"{offline_hint}") from err
    return data.to_list()


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, help="local SNLI copy (default: the hub)")
    args = parser.parse_args(argv)
    target = Path(params.load("data").raw_dir)
    if args.source is not None and not args.source.is_dir():
        raise PipelineError(f"{args.source}: not a directory")
    with atomic_dir(target) as staging:
        for split in SPLITS:
            rows = local_rows(args.source, split) if args.source else hub_rows(split)
            if not rows:
                raise PipelineError(f"{args.source or HUB_ID}: the {split} split is empty; {target} is left as it was")
            write_split(rows, staging / f"{split}.jsonl.gz")
            print(f"{split}: {len(rows)} rows")
    print(f"SNLI written to {target}")


if __name__ == "__main__":
    run_as_program(main)
