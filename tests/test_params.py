"""params.yaml schema: params.yaml is the only source of values; one clear line for each bad value."""
import pytest
import yaml

from stages.lib import params
from stages.lib.errors import PipelineError
from tests.conftest import ROOT

COMMITTED = yaml.safe_load((ROOT / "params.yaml").read_text())


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def with_change(tmp_path, section, key, value):
    values = {name: dict(keys) for name, keys in COMMITTED.items()}
    values[section][key] = value
    return write(tmp_path, yaml.safe_dump(values))


def test_shipped_params_load():
    for section in params.SECTIONS:
        params.load(section)
    assert params.load("model").trust_remote_code is False


@pytest.mark.parametrize("section, key, value, message", [
    ("train", "batch_size", "eight", "train.batch_size must be int"),
    ("train", "lr", 0, "train.lr must be a finite number > 0"),
    ("train", "lr", float("nan"), "train.lr must be a finite number > 0"),
    ("train", "optim", "adam", "train.optim 'adam' is not an optimizer Trainer knows"),
    ("train", "batch_size", 0, "train.batch_size must be > 0"),
    ("train", "micro_batch_size", 512, r"train.micro_batch_size must be in \[1, train.batch_size\]"),
    ("lora", "r", 0, "lora.r and lora.alpha must be > 0"),
    ("lora", "dropout", 1.0, r"lora.dropout must be in \[0, 1\)"),
    ("train", "adapter_dtype", "float16", "train.adapter_dtype must be float32 or compute"),
    ("train", "warmup_ratio", 1.5, r"train.warmup_ratio must be in \[0, 1\)"),
    ("train", "activation_memory_budget", 0, r"train.activation_memory_budget must be in \(0, 1\]"),
    ("train", "activation_memory_budget", 0.5, "activation_memory_budget < 1 acts only with train.compile: true"),
    ("train", "checkpoint_every_n_layers", 2, "acts only with train.gradient_checkpointing: true"),
    ("train", "checkpoint_every_n_layers", 0, "train.checkpoint_every_n_layers must be > 0"),
    ("data", "train_size", -5, "data.train_size must be > 0"),
    ("train", "lr_rate", 0.1, "unknown key train.lr_rate"),
    ("prompt", "template", "{premise} {hypothesis} {label}", r"prompt.template: \{label\} is not a field"),
    ("prompt", "template", "{premise} {hypothesis} a { brace", "prompt.template: .*a literal brace is written"),
    ("prompt", "template", "{premise} only", r"prompt.template must contain \{hypothesis\}"),
])
def test_bad_values_name_the_key(tmp_path, section, key, value, message):
    with pytest.raises(PipelineError, match=message):
        params.load(section, with_change(tmp_path, section, key, value))


@pytest.mark.parametrize("text, section, message", [
    ("trian:\n  lr: 0.1\n", "train", "unknown section 'trian'"),
    ("", "data", "missing section 'data'"),
    ("train:\n  lr: 0.1\n", "train", "missing key train.epochs"),
    ("data:\n  seed: 1\n  seed: 2\n", "data", "line 3: duplicate key 'seed'"),
    ("data:\n  seed: [1\n", "data", r"params.yaml: line \d+: "),
])
def test_missing_or_malformed_params_are_errors_not_defaults(tmp_path, text, section, message):
    with pytest.raises(PipelineError, match=message):
        params.load(section, write(tmp_path, text))


def test_yaml_scientific_notation_is_a_float(tmp_path):
    assert params.load("train", with_change(tmp_path, "train", "lr", "2e-4")).lr == 2e-4
