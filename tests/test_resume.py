"""One commit, one result: a killed fine-tune resumes to the unbroken run's adapter and loss curve,
stale checkpoints are never resumed, and the adapter directory is the same bytes wherever it is made."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import ROOT, committed
from tests.project import copy_of, dvc, metrics, run, set_params, tiny_project

PLANTED_TOKEN = "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0123"
# 8 pairs, global batch 4: 2 steps an epoch, 3 epochs; a checkpoint after every step. Dropout on, so
# that the random state must come back with the checkpoint too.
RUN = {"data": {"train_size": 8}, "compute": {"processes": 1}, "lora": {"dropout": 0.1},
       "train": {"max_steps": -1, "epochs": 3.0, "save_steps": 1, "batch_size": 4, "logging_steps": 1}}


def tree_digest(path):
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def loss_curve(repo):
    return (repo / "metrics/finetune/plots/metrics/loss.tsv").read_text()


def finetune(repo, **env):
    return run([sys.executable, "-m", "stages.finetune"], repo, env={**os.environ, **env})


def kill_after_checkpoint(repo, step, timeout=600):
    """Start the stage, SIGKILL it once checkpoint-`step` is complete; return its output."""
    stage = subprocess.Popen([sys.executable, "-m", "stages.finetune"], cwd=repo, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while not (repo / f"models/checkpoints/checkpoint-{step}/trainer_state.json").is_file():
        assert stage.poll() is None, "the fine-tune finished before it could be killed:\n" + stage.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    stage.send_signal(signal.SIGKILL)
    return stage.communicate()[0]


@pytest.fixture(scope="module")
def repo(tmp_path_factory, snli_dir, small_model):
    repo = tiny_project(tmp_path_factory.mktemp("resume"), snli_dir, model={"name": str(small_model)}, **RUN)
    dvc("repro", "prepare_data", cwd=repo)
    return repo


@pytest.fixture(scope="module")
def unbroken(repo):
    dvc("repro", "finetune", cwd=repo)  # dvc.lock then records the adapter's hash
    assert not list((repo / "models/checkpoints").glob("checkpoint-*")), "a finished run leaves nothing to resume"
    return metrics(repo, "finetune"), tree_digest(repo / "models/adapter"), loss_curve(repo)


def test_a_run_killed_twice_resumes_to_the_unbroken_result(repo, unbroken, monkeypatch):
    # Killed after step 2 (the end of epoch 1), then killed again after step 4 (the end of epoch 2),
    # so the second session resumes across an epoch boundary and the third resumes into epoch 3.
    monkeypatch.setenv("HF_TOKEN", PLANTED_TOKEN)  # read from the environment, must never be written
    expected, adapter, curve = unbroken
    assert expected["steps"] == 6 and expected["epochs"] == 3.0
    assert "steps in" not in kill_after_checkpoint(repo, 2)
    second = kill_after_checkpoint(repo, 4)
    assert "resuming from models/checkpoints/checkpoint-" in second and "steps in" not in second
    output = finetune(repo)
    assert "resuming from models/checkpoints/checkpoint-" in output
    resumed = metrics(repo, "finetune")
    assert resumed["resumed_from_step"] >= 4 and resumed["steps"] == 6
    assert tree_digest(repo / "models/adapter") == adapter
    assert loss_curve(repo) == curve  # every step's row, the pre-kill ones included
    assert resumed["final_loss"] == expected["final_loss"] and resumed["tokens"] == expected["tokens"]
    assert resumed["train_seconds"] > 0
    written = [p for p in [*(repo / "metrics").rglob("*"), *(repo / "models").rglob("*")] if p.is_file()]
    assert written and not [p for p in written if PLANTED_TOKEN.encode() in p.read_bytes()]


def test_checkpoints_of_other_inputs_are_never_resumed(repo, unbroken):
    # An experiment killed mid-run, then its params reverted (the checkpoint folders stay): the
    # checkpoint carries its own fingerprint, so the committed params start afresh.
    set_params(repo, train={"lr": 0.05})
    kill_after_checkpoint(repo, 1)
    set_params(repo, train={"lr": yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["lr"]})
    output = finetune(repo)
    assert "resuming" not in output and metrics(repo, "finetune")["resumed_from_step"] == 0
    assert tree_digest(repo / "models/adapter") == unbroken[1]


def test_adapter_is_the_same_bytes_in_any_cache_location_and_hash_seed(tiny_run, tmp_path):
    from stages.lib.gguf_conversion import cache_root

    repo = copy_of(tiny_run[0], tmp_path / "project")  # the embedded GGUF model, as params.yaml ships it
    made = tree_digest(repo / "models/adapter")
    moved = tmp_path / "elsewhere"
    shutil.copytree(cache_root(), moved)  # the converted GGUF, found again by its sha256
    finetune(repo, NLI_QLORA_CACHE=str(moved), PYTHONHASHSEED="7")
    assert tree_digest(repo / "models/adapter") == made
    status = dvc("status", "finetune", cwd=repo)  # DVC sees the adapter unchanged: nothing downstream re-runs
    assert "models/adapter" not in status and "metrics/finetune" in status
    config = json.loads((repo / "models/adapter/adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == committed("model").name  # as params.yaml writes it
    assert config["target_modules"] == sorted(config["target_modules"])
    written = "".join(p.read_text() for p in (repo / "models/adapter").iterdir() if p.suffix in (".json", ".md"))
    assert str(moved) not in written and str(cache_root()) not in written and "/root" not in written
