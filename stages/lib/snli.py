"""SNLI rows: the label set, reading and checking split files, sampling, writing prepared rows."""
import gzip
import json
import random
from pathlib import Path

from .errors import PipelineError
from .files import atomic_path

LABELS = ("entailment", "neutral", "contradiction")
NO_GOLD = -1


def split_path(raw_dir, split):
    return Path(raw_dir) / f"{split}.jsonl.gz"


def read_rows(path):
    """Every row of a JSON Lines file (gzip or plain) as dicts with idx, premise, hypothesis, label.

    Labels are the integers 0/1/2 or -1 (no gold label). Any malformed row stops with its file, line
    and field. Lines are decoded one at a time, so a bad byte is reported on its own line.
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: split file not found")
    rows = []
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as lines:
            for line_no, raw in enumerate(lines, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise PipelineError(f"{path}: line {line_no}: not UTF-8 text ({err.reason})") from err
                rows.append(_check_row(path, line_no, line))
    except (OSError, EOFError) as err:  # truncated or not gzip at all
        raise PipelineError(f"{path}: cannot read: {err}") from err
    return rows


def _unique_keys(pairs):
    keys = [key for key, _ in pairs]
    repeated = next((key for key in keys if keys.count(key) > 1), None)
    if repeated is not None:
        raise ValueError(f"duplicate key {repeated!r}")
    return dict(pairs)


def _check_row(path, line_no, line):
    where = f"{path}: line {line_no}"
    try:
        obj = json.loads(line, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise PipelineError(f"{where}: malformed JSON ({err.msg})") from err
    except ValueError as err:  # a key written twice: JSON would keep the last one silently
        raise PipelineError(f"{where}: {err}") from err
    if not isinstance(obj, dict):
        raise PipelineError(f"{where}: expected a JSON object")
    for key in ("premise", "hypothesis"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise PipelineError(f"{where}: field {key!r} is missing or empty")
    label = obj.get("label")
    if type(label) is not int or label not in (NO_GOLD, 0, 1, 2):  # 1.0 and True are not labels
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


def balanced_sample(rows, per_label, seed, source):
    """`per_label` rows of each label, drawn and then shuffled by `seed` (so no label always comes last)."""
    rng = random.Random(seed)
    picked = []
    for label, name in enumerate(LABELS):
        group = [row for row in rows if row["label"] == label]
        if len(group) < per_label:
            raise PipelineError(f"{source}: needs {per_label} {name} pairs, has {len(group)}")
        picked += rng.sample(group, per_label)
    rng.shuffle(picked)
    return picked


def write_rows(rows, path):
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_prepared(path):
    """Rows written by prepare_data (they keep `idx`, their line in the raw split)."""
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]
