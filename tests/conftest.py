"""Shared fixtures: the SNLI copy beside the project and the embedded model (converted once)."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNLI = ROOT.parent / "shared" / "data" / "snli"


@pytest.fixture(scope="session")
def snli_dir():
    if not (SNLI / "test.jsonl.gz").is_file():
        pytest.fail(f"SNLI copy not found at {SNLI} (tests read ../shared/data/snli)")
    return SNLI


def committed(section, **changes):
    """A section of the committed params.yaml, with `changes` applied and checked."""
    from stages.lib import params

    return params.load(section, ROOT / "params.yaml", **changes)


@pytest.fixture(scope="session")
def model_params():
    return committed("model")  # the embedded SmolLM2 GGUF, as params.yaml ships it


@pytest.fixture(scope="session")
def tokenizer(model_params):
    from stages.lib.model import load_tokenizer

    return load_tokenizer(model_params)


@pytest.fixture(scope="session")
def quantized_model(model_params):
    from stages.lib.model import load_quantized

    return load_quantized(model_params)
