"""Shared fixtures: the SNLI copy beside the project and the embedded model (converted once).

The suite is hermetic: the hub libraries are set offline before any of them is imported (they read
the switches at import), the stages' subprocesses inherit that, and in this process a connection to
anything but loopback fails the test that made it.
"""
import ipaddress
import os
import socket
from pathlib import Path

for switch in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[switch] = "1"
os.environ["DVC_NO_ANALYTICS"] = "1"

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SNLI = Path(os.environ.get("NLI_QLORA_TEST_SNLI") or ROOT.parent / "shared" / "data" / "snli")


@pytest.fixture(scope="session")
def snli_dir():
    if not (SNLI / "test.jsonl.gz").is_file():
        pytest.fail(f"SNLI copy not found at {SNLI} (tests read ../shared/data/snli, or NLI_QLORA_TEST_SNLI=DIR)")
    return SNLI


def committed(section, **changes):
    """A section of the committed params.yaml, with `changes` applied and checked."""
    from stages.lib import params

    return params.load(section, ROOT / "params.yaml", **changes)


@pytest.fixture(scope="session")
def model_params():
    return committed("model")  # the embedded SmolLM2 GGUF, as params.yaml ships it


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, snli_dir):
    """(repo, output) of one tiny `dvc repro` of the committed project; tests work on copies of it."""
    from tests.project import dvc, tiny_project

    repo = tiny_project(tmp_path_factory.mktemp("tiny") / "project", snli_dir)
    return repo, dvc("repro", cwd=repo)


@pytest.fixture(scope="session")
def small_model(tmp_path_factory, model_params):
    """A local model directory: SmolLM2's tokenizer over a randomly initialized two-layer Llama of 3.3 M
    parameters. For tests of properties that hold for any model (resuming, batch layouts, process
    counts), at a fraction of the embedded model's load and step time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from stages.lib.model_source import source

    target = tmp_path_factory.mktemp("small_model")
    tokenizer = AutoTokenizer.from_pretrained(source(model_params)[0])
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def tokenizer(model_params):
    from stages.lib.model import load_tokenizer

    return load_tokenizer(model_params)


@pytest.fixture(scope="session")
def quantized_model(model_params):
    from stages.lib.model import load_quantized

    return load_quantized(model_params)


def _loopback_only(connect):
    def guarded(sock, address, *args):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = host == "localhost"
            if not loopback:
                raise AssertionError(f"a test tried to connect to {host}: the suite must stay on this machine")
        return connect(sock, address, *args)

    return guarded


@pytest.fixture(autouse=True, scope="session")
def no_network():
    original = socket.socket.connect
    socket.socket.connect = _loopback_only(original)
    yield
    socket.socket.connect = original
