"""A fine-tune killed with SIGKILL resumes from its last checkpoint and ends where an unbroken run ends."""
import hashlib
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.project import dvc, metrics, set_params, tiny_project

PLANTED_TOKEN = "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0123"


def adapter_digest(repo):
    return hashlib.sha256((repo / "models/adapter/adapter_model.safetensors").read_bytes()).hexdigest()


def kill_stage_when(repo, ready, timeout=600):
    """Start `dvc repro -f finetune`, SIGKILL the stage's python process once `ready()`; return its log."""
    dvc_run = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "-f", "finetune"], cwd=repo,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while not ready():
        assert dvc_run.poll() is None, "the fine-tune finished before it could be killed:\n" + dvc_run.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    for child in psutil.Process(dvc_run.pid).children(recursive=True):
        if "stages.finetune" in " ".join(child.cmdline()):
            child.send_signal(signal.SIGKILL)
    return dvc_run.communicate()[0]


@pytest.fixture(scope="module")
def repo(tmp_path_factory, snli_dir):
    return tiny_project(tmp_path_factory.mktemp("resume"), snli_dir, compute={"processes": 1},
                        train={"max_steps": 6, "save_steps": 2, "batch_size": 4})


def test_killed_finetune_resumes_and_matches_an_unbroken_run(repo, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", PLANTED_TOKEN)  # read from the environment, must never be written
    dvc("repro", "finetune", cwd=repo)
    unbroken, unbroken_digest = metrics(repo, "finetune"), adapter_digest(repo)
    assert not list((repo / "models/checkpoints").glob("checkpoint-*")), "a finished run leaves nothing to resume"

    killed_log = kill_stage_when(repo, lambda: (repo / "models/checkpoints/checkpoint-4/trainer_state.json").is_file())
    assert "finetune: 6 steps" not in killed_log

    output = dvc("repro", "finetune", cwd=repo)
    assert "finetune: resuming from models/checkpoints/checkpoint-4 (step 4)" in output
    resumed = metrics(repo, "finetune")
    assert resumed["resumed_from_step"] == 4 and resumed["steps"] == unbroken["steps"] == 6
    assert resumed["final_loss"] == unbroken["final_loss"]
    assert adapter_digest(repo) == unbroken_digest

    outputs = ["dvc.lock", "metrics", "models", "data/prepared", ".dvc/cache"]
    written = [p for name in outputs for p in ([repo / name] if (repo / name).is_file() else (repo / name).rglob("*"))
               if p.is_file()]
    assert len(written) > 10
    assert not [p for p in written if PLANTED_TOKEN.encode() in p.read_bytes()]


def test_checkpoints_of_other_params_are_not_resumed(repo):
    kill_stage_when(repo, lambda: (repo / "models/checkpoints/checkpoint-2/trainer_state.json").is_file())
    set_params(repo, train={"lr": 0.0001})
    output = dvc("repro", "finetune", cwd=repo)
    assert "resuming" not in output and metrics(repo, "finetune")["resumed_from_step"] == 0
