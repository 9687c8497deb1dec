"""Bad input and resource errors end with one line naming the key or file; the same seed gives the same data."""
import json
import shutil

import pytest
import torch
import yaml

from stages import finetune, prepare_data
from stages.lib.training import add_lora
from stages.lib.errors import PipelineError
from stages.lib.model import load_tokenizer
from stages.lib.prompt import Encoder
from tests.conftest import ROOT, committed
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
    summary = json.loads((crafted_project / "metrics/prepare_data/metrics.json").read_text())
    assert summary["train"]["n"] == 11 and summary["train"]["duplicate_pairs"] == 1
    assert summary["train_pairs_in_eval"] == 1
    shutil.rmtree(crafted_project / "data/prepared")
    prepare_data.main()
    assert (crafted_project / "data/prepared/train.jsonl").read_bytes() == first


def test_long_prompts_lose_their_start_and_are_counted(tokenizer):
    encoder = Encoder(tokenizer, committed("prompt", max_length=48))
    long_row = {"premise": "word " * 200, "hypothesis": "A short one.", "label": 0}
    [ids] = encoder.prompt_ids([long_row])
    assert len(ids) + max(map(len, encoder.answers)) <= 48 and encoder.truncated == 1
    assert tokenizer.decode(ids).rstrip().endswith("Answer:")  # the question and hypothesis survive
    encoder.prompt_ids([{"premise": "Short.", "hypothesis": "Short.", "label": 0}])
    assert encoder.truncated == 1


def test_target_modules_that_match_nothing(quantized_model):
    with pytest.raises(PipelineError, match="lora.target_modules"):
        add_lora(quantized_model, committed("lora", target_modules=["no_such_proj"]), committed("train"), torch.float32)


def test_missing_model_file_and_hub_id_offline(monkeypatch, tmp_path):
    with pytest.raises(PipelineError, match="model.name: GGUF file .* not found"):
        load_tokenizer(committed("model", name=str(tmp_path / "missing.gguf")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PipelineError, match="model.name: cannot load 'nobody/no-such-model'"):
        load_tokenizer(committed("model", name="nobody/no-such-model"))


def test_out_of_memory_names_the_params_to_lower():
    class ExhaustedTrainer:
        def train(self, resume_from_checkpoint=None):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with pytest.raises(PipelineError) as err:
        finetune.train(ExhaustedTrainer(), None, committed("train"), committed("prompt"))
    message = str(err.value)
    assert "out of GPU memory" in message and "train.batch_size (256)" in message
    assert "prompt.max_length (256)" in message and "gradient_checkpointing" in message and "\n" not in message
