"""Data-parallel stages on the CPU: 2 torchrun processes (gloo) through the same dvc.yaml commands."""
import pandas as pd
import pytest

from tests.project import dvc, metrics, set_params, tiny_project


@pytest.fixture(scope="module")
def repo(tmp_path_factory, snli_dir):
    repo = tiny_project(tmp_path_factory.mktemp("ddp"), snli_dir, compute={"processes": 1})
    dvc("repro", "evaluate_base", cwd=repo)
    return repo


def test_two_processes_predict_exactly_what_one_does(repo):
    single = pd.read_csv(repo / "data/predictions/base.csv")
    set_params(repo, compute={"processes": 2})
    output = dvc("repro", "evaluate_base", cwd=repo)
    assert "running 2 processes" in output
    double = pd.read_csv(repo / "data/predictions/base.csv")
    # Same pairs, order and predictions. Scores agree to float rounding only: torchrun gives each
    # worker one CPU thread, and a different thread count sums in a different order.
    pd.testing.assert_frame_equal(double.drop(columns=[c for c in double if c.startswith("score_")]),
                                  single.drop(columns=[c for c in single if c.startswith("score_")]))
    pd.testing.assert_frame_equal(double, single, rtol=1e-5)
    m = metrics(repo, "evaluate_base")
    assert m["processes"] == 2 and m["n"] == 18 and set(m["memory_per_process"]) == {"rank0", "rank1"}


def test_two_process_finetune_writes_one_adapter_and_one_metrics_file(repo):
    set_params(repo, compute={"processes": 2})
    dvc("repro", "finetune", cwd=repo)
    tune = metrics(repo, "finetune")
    assert tune["processes"] == 2 and tune["steps"] == 2 and set(tune["memory_per_process"]) == {"rank0", "rank1"}
    # Each optimizer step saw one batch per process.
    assert tune["tokens"] > 0 and tune["examples"] == 24
    assert sorted(p.name for p in (repo / "models/adapter").iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert [p.name for p in (repo / "metrics").iterdir() if p.name.startswith("finetune")] == ["finetune"]
