"""SNLI rows: the label set, reading and checking split files, sampling, atomic writing."""
import gzip
import json
import os
import random
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import PipelineError

LABELS = ("entailment", "neutral", "contradiction")
NO_GOLD = -1


def split_path(raw_dir, split):
    return Path(raw_dir) / f"{split}.jsonl.gz"


def _open_text(path):
    return gzip.open(path, "rt", encoding="utf-8") if str(path).endswith(".gz") else open(path, encoding="utf-8")


def read_rows(path):
    """Every row of a JSON Lines file (gzip or plain) as dicts with idx, premise, hypothesis, label.

    Labels are 0/1/2 or -1 (no gold label). Any malformed row stops with its file, line and field.
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: split file not found")
    rows = []
    try:
        with _open_text(path) as lines:
            for line_no, line in enumerate(lines, 1):
                rows.append(_check_row(path, line_no, line))
    except UnicodeDecodeError as err:
        raise PipelineError(f"{path}: line {len(rows) + 1}: not UTF-8 text ({err.reason})") from err
    except (OSError, EOFError) as err:  # truncated or not gzip at all
        raise PipelineError(f"{path}: cannot read: {err}") from err
    return rows


def _check_row(path, line_no, line):
    where = f"{path}: line {line_no}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise PipelineError(f"{where}: malformed JSON ({err.msg})") from err
    if not isinstance(obj, dict):
        raise PipelineError(f"{where}: expected a JSON object")
    for key in ("premise", "hypothesis"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise PipelineError(f"{where}: field {key!r} is missing or empty")
    label = obj.get("label")
    if isinstance(label, bool) or label not in (NO_GOLD, 0, 1, 2):
        raise PipelineError(f"{where}: field 'label' must be 0, 1, 2 or -1, got {label!r}")
    return {"idx": line_no - 1, "premise": obj["premise"], "hypothesis": obj["hypothesis"], "label": label}


def stratified_sample(rows, size, seed):
    """`size` rows drawn without replacement, label shares kept (largest remainder), in file order."""
    if size is None or size >= len(rows):
        return list(rows)
    by_label = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    quotas = {label: size * len(group) / len(rows) for label, group in sorted(by_label.items())}
    counts = {label: int(q) for label, q in quotas.items()}
    for label in sorted(quotas, key=lambda lab: (counts[lab] - quotas[lab], lab))[: size - sum(counts.values())]:
        counts[label] += 1
    rng = random.Random(seed)
    picked = [row for label, group in sorted(by_label.items()) for row in rng.sample(group, counts[label])]
    return sorted(picked, key=lambda row: row["idx"])


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path):
    """Yield a temporary directory beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_rows(rows, path):
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_prepared(path):
    """Rows written by prepare_data (they keep `idx`, their line in the raw split)."""
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]
