"""End to end: `dvc repro` on a tiny slice in a temporary git copy of the project."""
import json
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT

STAGES = ["prepare_data", "evaluate_base", "finetune", "evaluate_adapted", "analyze"]


def run(args, cwd):
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def dvc(*args, cwd):
    return run([sys.executable, "-m", "dvc", *args], cwd)


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


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory, snli_dir):
    repo = tmp_path_factory.mktemp("project")
    files = run(["git", "ls-files", "-z"], ROOT).split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file() and not name.startswith(("metrics/", "bench/results/")) and name != "dvc.lock":
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    set_params(repo, data={"train_size": 24, "eval_size": 18},
               train={"max_steps": 2, "batch_size": 4, "logging_steps": 1}, eval={"batch_size": 6})
    git("init", "-q", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "tiny", cwd=repo)
    run([sys.executable, "-m", "stages.fetch_data", "--from", str(snli_dir)], repo)
    first = dvc("repro", cwd=repo)
    return repo, first


def metrics(repo, stage):
    return json.loads((repo / "metrics" / stage / "metrics.json").read_text())


def test_repro_runs_every_stage_and_writes_documented_metrics(tiny_repo):
    repo, output = tiny_repo
    assert ran_stages(output) == STAGES
    for which in ("base", "adapted"):
        m = metrics(repo, f"evaluate_{which}")
        assert m["n"] == 18 and 0 <= m["accuracy_ci95"]["low"] <= m["accuracy"] <= m["accuracy_ci95"]["high"] <= 1
        assert set(m["per_class"]) == {"entailment", "neutral", "contradiction"}
        assert sum(m["predicted"].values()) == 18 and m["examples_per_s"] > 0
        assert m["memory"]["cpu_peak_rss_gib"] > 0
    tune = metrics(repo, "finetune")
    assert tune["steps"] == 2 and tune["train_seconds"] > 0 and tune["tokens_per_s"] > 0
    assert tune["params"]["base_model"] == 134_515_008 and 0 < tune["params"]["trainable_pct"] < 10
    assert (repo / "models/adapter/adapter_model.safetensors").is_file()
    analysis = metrics(repo, "analyze")
    assert sum(analysis["counts"].values()) == 18
    assert "## Regressed" in (repo / "reports/report.md").read_text()
    assert (repo / "metrics/finetune/plots/metrics/loss.tsv").is_file()


def test_finetune_param_change_reruns_only_downstream_stages(tiny_repo):
    repo, _ = tiny_repo
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "first run", cwd=repo)
    set_params(repo, lora={"r": 8})
    output = dvc("repro", cwd=repo)
    assert ran_stages(output) == ["finetune", "evaluate_adapted", "analyze"]
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "lora r 8", cwd=repo)
    diff = json.loads(dvc("metrics", "diff", "HEAD~1", "--all", "--json", cwd=repo))
    keys = {(path, key) for path, changes in diff.items() for key in changes}
    assert ("metrics/finetune/metrics.json", "params.trainable") in keys
    assert ("metrics/finetune/metrics.json", "train_seconds") in keys
    assert ("metrics/finetune/metrics.json", "memory.cpu_peak_rss_gib") in keys
    assert ("metrics/evaluate_adapted/metrics.json", "accuracy") in keys
    assert ("metrics/evaluate_adapted/metrics.json", "memory.cpu_peak_rss_gib") in keys
