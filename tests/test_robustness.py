"""Bad input and resource errors end with one line naming the key or file; the same seed gives the same data."""
import json
import os
import shutil
import subprocess
import sys
import time
from importlib.metadata import version

import pytest
import torch
import yaml

from stages import finetune, prepare_data
from stages.lib.training import add_lora
from stages.lib.errors import PipelineError
from stages.lib.model import load_tokenizer
from stages.lib.prompt import Encoder
from tests.conftest import ROOT, committed
from tests.project import set_params
from tests.test_data import write_lines


def pair(premise, hypothesis, label):
    return json.dumps({"premise": premise, "hypothesis": hypothesis, "label": label})


@pytest.fixture
def crafted_project(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    train = [pair(f"Premise {i}.", f"Hypothesis {i}.", i % 3) for i in range(9)]
    train += [pair("Premise 0.", "Hypothesis 0.", 1), pair("Shared premise.", "Shared hypothesis.", 2)]
    write_lines(raw / "train.jsonl.gz", train)
    write_lines(raw / "test.jsonl.gz", [pair("Shared premise.", "Shared hypothesis.", 2), pair("A.", "B.", 0)])
    values = yaml.safe_load((ROOT / "params.yaml").read_text())
    values["data"] |= {"raw_dir": str(raw), "train_size": None, "eval_size": None}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(values))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_duplicates_are_kept_and_counted_and_prepared_data_is_deterministic(crafted_project):
    prepare_data.main()
    first = (crafted_project / "data/prepared/train.jsonl").read_bytes()
    summary = json.loads((crafted_project / "metrics/prepare_data/details.json").read_text())
    assert summary["train"]["n"] == 11 and summary["train"]["duplicate_pairs"] == 1
    assert summary["train_pairs_in_eval"] == 1
    # Visible in the output and carried to the report: overlap, and a class the evaluation lacks.
    assert set(summary["warnings"]) == {"train_pairs_in_eval", "eval_labels_missing"}
    assert "no neutral pair" in summary["warnings"]["eval_labels_missing"]
    shutil.rmtree(crafted_project / "data/prepared")
    prepare_data.main()
    assert (crafted_project / "data/prepared/train.jsonl").read_bytes() == first


def test_evaluating_on_the_training_split_stops_and_writes_nothing(crafted_project):
    set_params(crafted_project, data={"eval_split": "train"})
    with pytest.raises(SystemExit):
        prepare_data.main()
    assert not (crafted_project / "data/prepared").exists() and not (crafted_project / "metrics").exists()


def test_a_failed_adapter_write_keeps_the_previous_adapter(tmp_path, monkeypatch):
    import errno

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models/adapter").mkdir(parents=True)
    (tmp_path / "models/adapter/adapter_model.safetensors").write_bytes(b"previous")

    class FullDisk:
        peft_config = {"default": type("Config", (), {"target_modules": {"q_proj"}})()}

        def save_pretrained(self, target, **kwargs):
            (target / "adapter_model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")

    from stages.lib.files import atomic_dir

    with pytest.raises(OSError, match="No space left"), atomic_dir("models/adapter") as staging:
        finetune.save_adapter(FullDisk(), committed("model"), staging)
    assert (tmp_path / "models/adapter/adapter_model.safetensors").read_bytes() == b"previous"
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["adapter"]  # no staging folder left


def test_a_rare_long_prompt_loses_its_start_but_a_wrong_budget_stops(tokenizer):
    encoder = Encoder(tokenizer, committed("prompt", max_length=48))
    long_row = {"premise": "word " * 200, "hypothesis": "A short one.", "label": 0}
    short_row = {"premise": "Short.", "hypothesis": "Short.", "label": 0}
    ids = encoder.prompt_ids([long_row] + [short_row] * 100)[0]
    assert len(ids) + max(map(len, encoder.answers)) <= 48 and encoder.truncated == 1
    assert tokenizer.decode(ids).rstrip().endswith("Answer:")  # the question and hypothesis survive
    with pytest.raises(PipelineError, match=r"prompt.max_length \(48\) would cut the start off 2 of 100 prompts"):
        encoder.prompt_ids([long_row] * 2 + [short_row] * 98)


def test_every_target_module_must_match(quantized_model):
    with pytest.raises(PipelineError, match=r"lora.target_modules: no module named 'v_prj' .*nearest: v_proj"):
        add_lora(quantized_model, committed("lora", target_modules=["q_proj", "v_prj"]), committed("train"),
                 torch.float32)


def test_missing_model_file_and_local_directory(tmp_path):
    with pytest.raises(PipelineError, match="model.name: GGUF file .* not found"):
        load_tokenizer(committed("model", name=str(tmp_path / "missing.gguf")))
    # models/ exists here, so models/SmolLM2-135M is a directory that is missing, not a hub id
    with pytest.raises(PipelineError, match="model.name: no such directory 'models/SmolLM2-135M'"):
        load_tokenizer(committed("model", name="models/SmolLM2-135M"))


def stage_in(directory, *args, **env):
    """Run a stage module with `directory` as the project root (params.yaml and data there)."""
    return subprocess.run([sys.executable, "-m", *args], cwd=directory, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_a_hub_id_offline_fails_in_seconds_with_one_line(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path)
    set_params(tmp_path, model={"name": "nobody/no-such-model"})
    write_prepared(tmp_path, 3)
    started = time.monotonic()
    done = stage_in(tmp_path, "stages.evaluate", "base", HF_HUB_OFFLINE="1")  # set before any import
    assert done.returncode == 2 and time.monotonic() - started < 60
    assert done.stderr.strip().splitlines()[-1].startswith("error: params.yaml: model.name: cannot load 'nobody/")


def test_a_failing_model_stage_ends_with_its_one_error_line(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path)
    set_params(tmp_path, prompt={"max_length": 16})  # found wrong only once the tokenizer has loaded
    write_prepared(tmp_path, 20)
    done = stage_in(tmp_path, "stages.evaluate", "base")
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: params.yaml: prompt.max_length (16) would cut")
    assert not (tmp_path / "data/predictions").exists() and not (tmp_path / "metrics").exists()


def test_a_damaged_adapter_is_one_clear_error(quantized_model, model_params, tmp_path):
    from stages.lib.model import load_quantized

    model = add_lora(quantized_model, committed("lora"), committed("train"), torch.float32)
    model.save_pretrained(tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(PipelineError, match=f"{tmp_path}: cannot read the adapter .*re-run finetune"):
        load_quantized(model_params, tmp_path)


def test_version_drift_is_one_warning_line_per_package(tmp_path, capsys):
    from stages.lib.environment import version_drift

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("torch==0.0.1\npandas==0.0.1  # not result-changing\npeft==" + version("peft") + "\n")
    drift = version_drift("finetune", requirements=requirements)
    assert drift == {"torch": {"pinned": "0.0.1", "installed": version("torch")}}
    assert capsys.readouterr().out.splitlines() == [
        f"finetune: warning: torch {version('torch')} is installed, requirements.txt pins 0.0.1: results may differ "
        "from the committed ones"]


def test_out_of_memory_names_the_params_to_lower():
    class ExhaustedTrainer:
        args = type("Arguments", (), {"per_device_train_batch_size": 64})

        def train(self, resume_from_checkpoint=None):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with pytest.raises(PipelineError) as err:
        finetune.train(ExhaustedTrainer(), None, committed("train"), committed("prompt"))
    message = str(err.value)
    assert "out of GPU memory" in message and "train.micro_batch_size (64)" in message
    assert "prompt.max_length (256)" in message and "gradient_checkpointing" in message and "\n" not in message


def write_prepared(directory, n):
    rows = [{"idx": i, "premise": f"A person number {i} walks a dog in the park.", "hypothesis": "Someone is outside.",
             "label": i % 3} for i in range(n)]
    (directory / "data/prepared").mkdir(parents=True)
    (directory / "data/prepared/eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
