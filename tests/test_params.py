"""params.yaml schema: defaults, and one clear line for each kind of bad value."""
import pytest

from stages.lib import params
from stages.lib.errors import PipelineError


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_shipped_params_load():
    for section in params.SECTIONS:
        params.load(section)
    assert params.load("model").trust_remote_code is False


@pytest.mark.parametrize("text, message", [
    ("train:\n  lr_rate: 0.1\n", "unknown key train.lr_rate"),
    ("trian:\n  lr: 0.1\n", "unknown section 'trian'"),
    ("train:\n  batch_size: eight\n", "train.batch_size must be int"),
    ("train:\n  lr: 0\n", "train.lr must be > 0"),
    ("train:\n  batch_size: 0\n", "train.batch_size must be > 0"),
    ("lora:\n  r: 0\n", "lora.r and lora.alpha must be > 0"),
    ("lora:\n  dropout: 1.0\n", r"lora.dropout must be in \[0, 1\)"),
    ("train:\n  adapter_dtype: float16\n", "train.adapter_dtype must be float32 or compute"),
    ("train:\n  warmup_ratio: 1.5\n", r"train.warmup_ratio must be in \[0, 1\)"),
    ("train:\n  activation_memory_budget: 0\n", r"train.activation_memory_budget must be in \(0, 1\]"),
    ("train:\n  checkpoint_every_n_layers: 0\n", "train.checkpoint_every_n_layers must be > 0"),
    ("data:\n  train_size: -5\n", "data.train_size must be > 0"),
])
def test_bad_values_name_the_key(tmp_path, text, message):
    section = text.split(":")[0]
    section = section if section in params.SECTIONS else "train"
    with pytest.raises(PipelineError, match=message):
        params.load(section, write(tmp_path, text))


def test_yaml_scientific_notation_is_a_float(tmp_path):
    assert params.load("train", write(tmp_path, "train:\n  lr: 2e-4\n")).lr == 2e-4
