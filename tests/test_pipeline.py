"""End to end: `dvc repro` on a tiny slice in a temporary git copy of the project."""
import json

import pytest

from tests.project import STAGES, dvc, git, metrics, ran_stages, set_params, tiny_project


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory, snli_dir):
    repo = tiny_project(tmp_path_factory.mktemp("project"), snli_dir)
    return repo, dvc("repro", cwd=repo)


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
    dvc("plots", "diff", "HEAD~1", "-o", "plots_diff", cwd=repo)
    page = (repo / "plots_diff/index.html").read_text()
    assert "Fine-tuning loss" in page and "Confusion matrix, adapted model" in page
