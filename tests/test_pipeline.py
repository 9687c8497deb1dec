"""End to end: `dvc repro` on a tiny slice in a temporary git copy of the project."""
import json

import pytest

from tests.project import STAGES, copy_of, dvc, git, metrics, ran_stages, run, set_params


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory, tiny_run):
    repo, output = tiny_run
    return copy_of(repo, tmp_path_factory.mktemp("pipeline") / "project"), output


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
    assert not [key for path, key in keys if key.startswith(("per_class", "confusion", "memory_per_process"))]
    assert ("metrics/evaluate_adapted/metrics.json", "accuracy") in keys
    assert ("metrics/evaluate_adapted/metrics.json", "memory.cpu_peak_rss_gib") in keys
    # A colleague's fresh clone has no DVC cache: every plot must still draw from git alone.
    clone = repo.parent / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], repo.parent)
    output = dvc("plots", "diff", "HEAD~1", "-o", "plots_diff", cwd=clone)
    assert "failed to load" not in output
    page = (clone / "plots_diff/index.html").read_text()
    for title in ("Fine-tuning loss", "Confusion matrix, base model", "Confusion matrix, adapted model",
                  "confusion.png", "slice_accuracy.png"):
        assert title in page, title
