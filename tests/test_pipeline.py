"""End to end: `dvc repro` on a tiny slice in a temporary git copy of the project."""
import json
import re

import pytest

from tests.project import STAGES, copy_of, dvc, git, metrics, ran_stages, run, set_params


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory, tiny_run):
    repo, output = tiny_run
    return copy_of(repo, tmp_path_factory.mktemp("pipeline") / "project"), output


def test_repro_runs_every_stage_and_writes_documented_metrics(tiny_repo):
    repo, output = tiny_repo
    assert set(ran_stages(output)) == set(STAGES)
    for which in ("base", "adapted"):
        m = metrics(repo, f"evaluate_{which}")
        assert m["n"] == 18 and 0 <= m["accuracy_ci95"]["low"] <= m["accuracy"] <= m["accuracy_ci95"]["high"] <= 1
        assert set(m["per_class"]) == {"entailment", "neutral", "contradiction"}
        assert sum(m["predicted"].values()) == 18 and m["examples_per_s"] > 0
        assert m["memory"]["cpu_peak_rss_gib"] > 0
    base = metrics(repo, "evaluate_base")
    for baseline in ("calibrated", "kshot"):  # the stronger base references, each with its own metrics
        assert 0 <= base[baseline]["accuracy"] <= 1 and sum(base[baseline]["predicted"].values()) == 18
    assert len(base["kshot"]["shown_idx"]) == 3 and sum(base["calibrated"]["content_free_prior"].values()) == \
        pytest.approx(1, abs=2e-6)  # three shares, each rounded to 6 decimals
    tune = metrics(repo, "finetune")
    assert tune["steps"] == 2 and tune["train_seconds"] > 0 and tune["tokens_per_s"] > 0
    assert tune["params"]["base_model"] == 134_515_008 and 0 < tune["params"]["trainable_pct"] < 10
    assert (repo / "models/adapter/adapter_model.safetensors").is_file()
    assert metrics(repo, "finetune_control") == {"enabled": False} == metrics(repo, "evaluate_control")
    analysis = metrics(repo, "analyze")
    assert sum(analysis["counts"].values()) == 18
    assert set(analysis["models"]) == {"base", "calibrated", "kshot", "adapted"}
    report = (repo / "reports/report.md").read_text()
    assert "## Regressed" in report and "| base, 3-shot |" in report and "Table 4" not in report
    assert (repo / "metrics/finetune/plots/metrics/loss.tsv").is_file()
    # Stages leave without interpreter teardown (errors.run_as_program): their last lines still got out.
    for last_line in (r"evaluate_base: [\d.]+ examples/s", r"finetune: 2 steps in [\d.]+ s",
                      r"evaluate_adapted: [\d.]+ examples/s", r"evaluate_control: off",
                      r"analyze: .*report in reports/report\.md"):
        assert re.search(last_line, output), last_line


def test_turning_the_control_on_reruns_only_its_stages(tiny_repo):
    repo, _ = tiny_repo
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "first run", cwd=repo)
    set_params(repo, control={"hypothesis_only": True})
    output = dvc("repro", cwd=repo)
    assert ran_stages(output) == ["finetune_control", "evaluate_control", "analyze"]
    control = metrics(repo, "evaluate_control")
    assert control["n"] == 18 and 0 <= control["accuracy"] <= 1
    assert len((repo / "data/predictions/control.csv").read_text().splitlines()) == 19
    report = (repo / "reports/report.md").read_text()
    assert "## Table 4: what the premise adds" in report and "solvable without the premise" in report
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "control on", cwd=repo)
    diff = json.loads(dvc("metrics", "diff", "HEAD~1", "--all", "--json", cwd=repo))
    keys = {(path, key) for path, changes in diff.items() for key in changes}
    assert ("metrics/finetune_control/metrics.json", "params.trainable") in keys
    assert ("metrics/finetune_control/metrics.json", "train_seconds") in keys
    assert ("metrics/evaluate_control/metrics.json", "accuracy") in keys
    assert ("metrics/analyze/metrics.json", "corrected_without_premise") in keys
    assert not [key for path, key in keys if key.startswith(("per_class", "confusion", "memory_per_process"))]
    # A colleague's fresh clone has no DVC cache: every plot must still draw from git alone.
    clone = repo.parent / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], repo.parent)
    output = dvc("plots", "diff", "HEAD~1", "-o", "plots_diff", cwd=clone)
    assert "failed to load" not in output
    page = (clone / "plots_diff/index.html").read_text()
    for title in ("Fine-tuning loss", "Confusion matrix, base model", "Confusion matrix, adapted model",
                  "confusion.png", "slice_accuracy.png"):
        assert title in page, title
