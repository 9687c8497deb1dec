"""The global batch: 1 process, 2 processes (gloo) and a halved micro-batch train the same model;
2 evaluation processes predict what one does; the micro-batch picker under a memory limit; the
launcher's workers stay on loopback and stop together."""
import subprocess
import sys

import pandas as pd
import pytest
import torch

from tests.project import dvc, metrics, set_params, tiny_project

LAYOUTS = {"1 process": {"compute": {"processes": 1}},
           "1 process, micro-batch halved": {"compute": {"processes": 1}, "train": {"micro_batch_size": 2}},
           "2 processes": {"compute": {"processes": 2}}}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, snli_dir, small_model):
    repo = tiny_project(tmp_path_factory.mktemp("ddp"), snli_dir, compute={"processes": 1},
                        model={"name": str(small_model)}, train={"max_steps": 3, "batch_size": 4, "logging_steps": 1})
    dvc("repro", "evaluate_base", cwd=repo)
    return repo


def stage(repo, *args):
    done = subprocess.run([sys.executable, "-m", *args], cwd=repo, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def stage_here(repo, module, *args):
    """A one-process stage run in this interpreter, in `repo`; returns nothing it printed ("")."""
    import importlib

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(repo)
        importlib.import_module(module).main(list(args))
    return ""


@pytest.fixture(scope="module")
def layouts(repo):
    """Per layout: the finetune metrics, the loss curve, the adapter weights, the adapted predictions."""
    from safetensors.torch import load_file

    results = {}
    for name, changes in LAYOUTS.items():
        set_params(repo, train={"micro_batch_size": None})
        set_params(repo, **changes)
        # One process runs in this interpreter (its imports already paid); two need their own.
        run_stage = stage if changes["compute"]["processes"] > 1 else stage_here
        output = run_stage(repo, "stages.finetune")
        assert "destroy_process_group" not in output  # multi-process runs end cleanly
        predictions = None
        if name != "1 process, micro-batch halved":  # its adapter is compared below; scoring it adds little
            run_stage(repo, "stages.evaluate", "adapted")
            predictions = pd.read_csv(repo / "data/predictions/adapted.csv")
        results[name] = (metrics(repo, "finetune"),
                         pd.read_csv(repo / "metrics/finetune/plots/metrics/loss.tsv", sep="\t"),
                         load_file(repo / "models/adapter/adapter_model.safetensors"), predictions)
    set_params(repo, compute={"processes": 1}, train={"micro_batch_size": None})
    return results


def test_every_layout_trains_the_same_model(layouts):
    reference, reference_loss, reference_weights, reference_predictions = layouts["1 process"]
    assert (reference["processes"], reference["micro_batch_size"], reference["accumulation_steps"]) == (1, 4, 1)
    assert (layouts["1 process, micro-batch halved"][0]["accumulation_steps"]) == 2
    assert (layouts["2 processes"][0]["processes"], layouts["2 processes"][0]["micro_batch_size"]) == (2, 2)
    for name, (tune, loss, weights, predictions) in layouts.items():
        assert tune["steps"] == 3 and tune["batch_size"] == 4 and tune["tokens"] == reference["tokens"], name
        # Up to the order of floating-point sums: one process and two workers use different
        # thread counts, and accumulation adds micro-batch gradients one at a time. Adam's first
        # steps move each weight by about lr whatever its gradient's size, so a near-zero gradient
        # whose rounding differs moves its weight the other way: compare whole tensors, not elements.
        pd.testing.assert_series_equal(loss["loss"], reference_loss["loss"], rtol=1e-4, obj=name)
        for key, weight in reference_weights.items():
            gap = (weights[key] - weight).norm() / weight.norm()
            assert gap < 0.02, (name, key, gap.item())
        if predictions is not None:
            assert predictions["predicted_label"].tolist() == reference_predictions["predicted_label"].tolist(), name


def test_two_evaluation_processes_predict_exactly_what_one_does(repo):
    single = pd.read_csv(repo / "data/predictions/base.csv")
    set_params(repo, compute={"processes": 2})
    output = dvc("repro", "evaluate_base", cwd=repo)
    set_params(repo, compute={"processes": 1})
    assert "running 2 processes" in output
    double = pd.read_csv(repo / "data/predictions/base.csv")
    # Same pairs, order and predictions. Scores agree to float rounding only: the launcher gives each
    # worker one CPU thread, and a different thread count sums in a different order.
    pd.testing.assert_frame_equal(double.drop(columns=[c for c in double if "score_" in c]),
                                  single.drop(columns=[c for c in single if "score_" in c]))
    pd.testing.assert_frame_equal(double, single, rtol=1e-5)
    m = metrics(repo, "evaluate_base")
    assert m["processes"] == 2 and m["n"] == 18 and set(m["memory_per_process"]) == {"rank0", "rank1"}


def test_null_processes_spread_only_work_that_pays(monkeypatch, model_params):
    from stages.lib import distributed
    from stages.lib.model import GPU_BOUND_PARAMS, parameter_count, spreads_over_gpus
    from stages.lib.params import ComputeParams

    monkeypatch.setattr(distributed, "visible_gpus", lambda: 2)
    auto, two = ComputeParams(processes=None), ComputeParams(processes=2)
    assert (distributed.process_count(auto, lambda: True), distributed.process_count(auto, lambda: False)) == (2, 1)
    assert distributed.process_count(two, lambda: False) == 2
    assert parameter_count(model_params) == 134_515_008 < GPU_BOUND_PARAMS  # the default: one process
    assert not spreads_over_gpus(model_params)


class MemoryLimitedModel(torch.nn.Module):
    """Raises CUDA's out-of-memory error for batches over `limit` rows, as a small GPU would."""

    def __init__(self, limit):
        super().__init__()
        self.limit, self.weight, self.tried = limit, torch.nn.Parameter(torch.ones(1)), []

    def forward(self, input_ids, **kwargs):
        self.tried.append(len(input_ids))
        if len(input_ids) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        torch.rand(1)  # a forward pass draws random numbers (dropout); the probe must give them back
        return type("Output", (), {"loss": (self.weight * input_ids.float().mean()).sum()})()


def test_micro_batch_picker_takes_the_largest_that_fits_and_divides_the_batch(tokenizer, snli_dir):
    from stages.lib.batches import TrainingCollator
    from stages.lib.prompt import Encoder
    from stages.lib.snli import read_rows
    from stages.lib.training import fitting_micro_batch, micro_batch_choices
    from tests.conftest import committed

    assert micro_batch_choices(24, 2) == [12, 6, 4, 3, 2, 1]
    collator = TrainingCollator(Encoder(tokenizer, committed("prompt")))
    rows = [r for r in read_rows(snli_dir / "validation.jsonl.gz") if r["label"] != -1][:12]
    model = MemoryLimitedModel(limit=5)
    torch.manual_seed(0)
    random_state = torch.get_rng_state()
    assert fitting_micro_batch(model, collator, collator.examples(rows), micro_batch_choices(24, 2)) == 4
    assert model.tried == [12, 6, 4] and model.weight.grad is None
    assert torch.equal(torch.get_rng_state(), random_state)
    with pytest.raises(Exception, match="one pair per forward pass does not fit"):
        fitting_micro_batch(MemoryLimitedModel(limit=0), collator, collator.examples(rows), [2, 1])


def test_largest_fitting_steps_down_through_the_sizes_it_is_given():
    from stages.lib.memory import largest_fitting

    def limited(limit):
        def attempt(size):
            if size > limit:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return attempt

    assert largest_fitting([1024, 512, 256, 128], limited(300)) == 256
    assert largest_fitting([12, 6, 4, 3], limited(0)) == 0
    with pytest.raises(ValueError):  # anything but running out of memory is not a reason to step down
        largest_fitting([4, 2], lambda size: int("x"))


@pytest.fixture(scope="module")
def launched_workers(tmp_path_factory):
    import json

    out = tmp_path_factory.mktemp("launched") / "workers.json"
    done = subprocess.run([sys.executable, "-m", "tests.launched_worker", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_launched_workers_listen_on_loopback_only(launched_workers):
    import ipaddress

    assert [w["sum"] for w in launched_workers] == [2.0, 2.0]
    addresses = [a for w in launched_workers for a in w["listening"]]
    assert addresses and all(ipaddress.ip_address(a).is_loopback for a in addresses), addresses


def test_graphs_average_gradients_across_processes_as_the_data_parallel_wrapper_does(launched_workers):
    assert [w["average_is_the_wrappers"] for w in launched_workers] == [True, True]


def test_a_failing_worker_stops_the_others_with_its_one_line(tmp_path):
    import time

    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "tests.launched_worker", str(tmp_path / "x"), "--fail"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and time.monotonic() - started < 60
    assert done.stderr.strip().splitlines()[-1] == "error: worker 1: planted failure", done.stderr
    assert "Traceback" not in done.stderr
