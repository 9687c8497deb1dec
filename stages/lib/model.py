"""Loading the model, in one place for both evaluations and fine-tuning: the tokenizer, the base in
4-bit (bitsandbytes NF4) with an adapter if given, and the parameter count (which decides whether a
stage spreads over several GPUs).

Every model is loaded with the same 4-bit quantization, so base and adapted scores differ only by
the adapter. `model_source.py` says what `model.name` points at.
"""
from pathlib import Path

from . import distributed
from .errors import PipelineError, first_line
from .model_source import source

GPU_BOUND_PARAMS = 10**9  # from this size a base model's steps and scoring set the pace on the GPU, not the host


def parameter_count(params):
    """Parameters of the base model, counted from its config on the meta device (no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = pretrained(AutoConfig, params)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=params.trust_remote_code)
    return sum(p.numel() for p in model.parameters())


def spreads_over_gpus(params):
    """Whether `compute.processes: null` runs a model stage on every visible GPU: for a base of at least
    GPU_BOUND_PARAMS parameters. A smaller one's steps wait on the host, so a second process and its
    model load cost more than they save (docs/benchmarks.md: Several GPUs)."""
    return parameter_count(params) >= GPU_BOUND_PARAMS


def relaunch_where_it_pays(module, argv, params, compute_params):
    """In the process dvc started: convert a GGUF once, before any workers start, then run `python -m
    module argv` as `compute.processes` workers (null: every visible GPU where `spreads_over_gpus`) and
    exit with their status. Returns at once in a worker, or when one process suffices."""
    if distributed.is_launcher():
        source(params)
        processes = distributed.process_count(compute_params, lambda: spreads_over_gpus(params))
        distributed.relaunch(module, argv, processes)


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
        raise PipelineError(f"params.yaml: model.name: cannot load {params.name!r}: {first_line(err)}") from err


def load_tokenizer(params):
    from transformers import AutoTokenizer

    tokenizer = pretrained(AutoTokenizer, params)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_quantized(params, adapter_dir=None):
    """The base model in 4-bit (bitsandbytes), with the LoRA adapter from `adapter_dir` if given."""
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    dtype = compute_dtype(params)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=params.quant_type,
                                      bnb_4bit_use_double_quant=params.double_quant,
                                      bnb_4bit_compute_dtype=dtype)
    config = pretrained(AutoConfig, params)
    if getattr(config, "hidden_act", None) == "gelu_new":  # phi-2 and GPT-2 style models
        config.hidden_act = "gelu_pytorch_tanh"  # the same tanh GELU in one fused kernel, not eight
    model = pretrained(AutoModelForCausalLM, params, config=config, quantization_config=quantization, dtype=dtype,
                       device_map={"": distributed.local_device()}, use_safetensors=True)
    model.get_output_embeddings().register_forward_pre_hook(_contiguous_input)
    if adapter_dir is not None:
        from peft import PeftModel
        from safetensors import safe_open

        try:
            model = PeftModel.from_pretrained(model, adapter_dir)
            with safe_open(Path(adapter_dir) / "adapter_model.safetensors", "pt") as saved:
                saved_dtype = saved.get_tensor(next(iter(saved.keys()))).dtype
        except Exception as err:  # safetensors, json and peft each raise their own type for a damaged file
            raise PipelineError(f"{adapter_dir}: cannot read the adapter ({first_line(err)}); "
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
