"""SNLI parsing, bad rows, sampling and the raw-data helper."""
import gzip
import json
import shutil
from collections import Counter

import pytest

from stages import fetch_data
from stages.lib.errors import PipelineError
from stages.lib.snli import read_rows, stratified_sample, write_rows
from stages.prepare_data import prepare
from tests.conftest import ROOT


def in_project_copy(tmp_path, monkeypatch):
    """Work in tmp_path as if it were the project root (the helper reads params.yaml there)."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)


def write_lines(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return path


GOOD = json.dumps({"premise": "A dog runs.", "hypothesis": "An animal moves.", "label": 0})


def test_reads_the_full_test_split_in_file_order(snli_dir):
    rows = read_rows(snli_dir / "test.jsonl.gz")
    assert len(rows) == 10000
    assert rows[0]["premise"].startswith("This church choir sings") and rows[0]["label"] == 1
    assert [r["idx"] for r in rows[:3]] == [0, 1, 2]
    assert Counter(r["label"] for r in rows) == {-1: 176, 0: 3368, 1: 3219, 2: 3237}


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 2: malformed JSON"),
    (json.dumps({"hypothesis": "h", "label": 0}), "line 2: field 'premise' is missing or empty"),
    (json.dumps({"premise": "p", "hypothesis": "   ", "label": 0}), "line 2: field 'hypothesis' is missing or empty"),
    (json.dumps({"premise": "p", "hypothesis": "h", "label": "maybe"}), "line 2: field 'label' must be 0, 1, 2 or -1"),
    (json.dumps({"premise": "p", "hypothesis": "h", "label": 7}), "line 2: field 'label'"),
    (json.dumps({"premise": "p", "hypothesis": "h", "label": 1.0}), "line 2: field 'label' must be 0, 1, 2 or -1"),
    ('{"premise": "p", "hypothesis": "h", "label": 0, "label": 2}', "line 2: duplicate key 'label'"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, line, message):
    path = write_lines(tmp_path / "train.jsonl.gz", [GOOD, line])
    with pytest.raises(PipelineError, match=message) as err:
        read_rows(path)
    assert str(path) in str(err.value)


def test_non_utf8_is_reported_on_its_own_line_and_missing_split(tmp_path):
    path = tmp_path / "test.jsonl.gz"
    with gzip.open(path, "wb") as f:  # the decoder reads ahead: the bad byte must still be placed exactly
        f.write((GOOD.encode() + b"\n") * 1233 + b'{"premise": "caf\xe9"}\n' + (GOOD.encode() + b"\n") * 50)
    with pytest.raises(PipelineError, match="line 1234: not UTF-8"):
        read_rows(path)
    with pytest.raises(PipelineError, match="split file not found"):
        read_rows(tmp_path / "validation.jsonl.gz")


def test_stratified_sample_keeps_label_shares_and_is_seeded(snli_dir):
    rows = [r for r in read_rows(snli_dir / "train.jsonl.gz") if r["label"] != -1]
    sample = stratified_sample(rows, 300, seed=1)
    assert len(sample) == 300
    shares = Counter(r["label"] for r in rows)
    for label, count in Counter(r["label"] for r in sample).items():
        assert abs(count - 300 * shares[label] / len(rows)) < 1
    assert sample == stratified_sample(rows, 300, seed=1)
    assert sample != stratified_sample(rows, 300, seed=2)
    assert [r["idx"] for r in sample] == sorted(r["idx"] for r in sample)


def test_prepare_drops_no_gold_rows_and_rejects_oversized_requests(snli_dir):
    rows = read_rows(snli_dir / "test.jsonl.gz")
    kept, dropped = prepare(rows, None, 0, "test")
    assert (len(kept), dropped) == (9824, 176)
    with pytest.raises(PipelineError, match="asked for 10000 pairs but it has only 9824"):
        prepare(rows, 10000, 0, "test.jsonl.gz")
    with pytest.raises(PipelineError, match="test.jsonl.gz: no pair has a gold label"):
        prepare([r | {"label": -1} for r in rows[:5]], None, 0, "test.jsonl.gz")


def test_fetch_refuses_an_empty_split_and_keeps_the_raw_data(tmp_path, monkeypatch, snli_dir):
    in_project_copy(tmp_path, monkeypatch)
    fetch_data.main(["--from", str(snli_dir)])
    before = (tmp_path / "data/raw/snli/test.jsonl.gz").read_bytes()
    source = tmp_path / "broken"
    shutil.copytree(snli_dir, source)
    write_lines(source / "test.jsonl.gz", [])
    with pytest.raises(SystemExit):
        fetch_data.main(["--from", str(source)])
    assert (tmp_path / "data/raw/snli/test.jsonl.gz").read_bytes() == before


def test_write_rows_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "out.jsonl"

    def broken():
        yield {"a": 1}
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_rows(broken(), target)
    assert list(tmp_path.iterdir()) == []


def test_fetch_reads_original_snli_release_layout(tmp_path, monkeypatch):
    source = tmp_path / "snli_1.0"
    source.mkdir()
    record = {"gold_label": "contradiction", "sentence1": "A man sleeps.", "sentence2": "A man runs."}
    for name in ("train", "dev", "test"):
        unlabeled = record | {"gold_label": "-"}
        (source / f"snli_1.0_{name}.jsonl").write_text(json.dumps(record) + "\n" + json.dumps(unlabeled) + "\n")
    in_project_copy(tmp_path, monkeypatch)
    fetch_data.main(["--from", str(source)])
    rows = read_rows(tmp_path / "data/raw/snli/validation.jsonl.gz")
    assert [r["label"] for r in rows] == [2, -1]


def test_fetch_is_byte_stable(tmp_path, monkeypatch, snli_dir):
    in_project_copy(tmp_path, monkeypatch)
    fetch_data.main(["--from", str(snli_dir)])
    first = (tmp_path / "data/raw/snli/test.jsonl.gz").read_bytes()
    fetch_data.main(["--from", str(snli_dir)])
    assert (tmp_path / "data/raw/snli/test.jsonl.gz").read_bytes() == first


def test_fetch_offline_says_how_to_use_a_local_copy(tmp_path, monkeypatch, capsys):
    in_project_copy(tmp_path, monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SystemExit) as exit_info:
        fetch_data.main([])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "make repro SNLI=DIR" in err
    assert not (tmp_path / "data/raw/snli").exists()
