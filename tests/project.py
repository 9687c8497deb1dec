"""A throwaway git copy of the project on a tiny SNLI slice, and the commands tests run in it."""
import shutil
import subprocess
import sys

import yaml

from tests.conftest import ROOT

STAGES = ["prepare_data", "evaluate_base", "finetune", "evaluate_adapted", "finetune_control", "evaluate_control",
          "analyze"]
TINY = {"data": {"train_size": 24, "eval_size": 18},
        "train": {"max_steps": 2, "batch_size": 4, "logging_steps": 1}, "eval": {"batch_size": 6}}


def run(args, cwd, **kwargs):
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def dvc(*args, cwd, **kwargs):
    return run([sys.executable, "-m", "dvc", *args], cwd, **kwargs)


def git(*args, cwd):
    return run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", *args], cwd)


def set_params(repo, **sections):
    path = repo / "params.yaml"
    values = yaml.safe_load(path.read_text())
    for section, changes in sections.items():
        values[section].update(changes)
    path.write_text(yaml.safe_dump(values, sort_keys=False))


def ran_stages(output):
    return [s for s in STAGES if f"Running stage '{s}'" in output]


def tiny_project(repo, snli_dir, **params):
    """Copy the committed project (no results) into `repo`, shrink params, commit, fetch SNLI."""
    files = run(["git", "ls-files", "-z"], ROOT).split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file() and not name.startswith(("metrics/", "bench/results/", "models/")) \
                and name != "dvc.lock":
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    set_params(repo, **TINY)
    set_params(repo, **params)
    git("init", "-q", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "tiny", cwd=repo)
    run([sys.executable, "-m", "stages.fetch_data", "--from", str(snli_dir)], repo)
    dvc("add", "-q", "data/raw/snli", cwd=repo)  # byte-stable fetch: the committed .dvc file still matches
    assert not run(["git", "status", "--porcelain"], repo).strip()
    return repo


def metrics(repo, stage):
    """A stage's headline metrics and its details, in one dict."""
    from stages.lib.metrics import read_metrics

    return read_metrics(stage, repo / "metrics")


def copy_of(repo, target):
    """A copy of a project repo (git, DVC cache and workspace): its own place to change things."""
    shutil.copytree(repo, target, symlinks=True)
    return target
