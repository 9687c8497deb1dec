"""The params.yaml schema: one dataclass per section, with types and checks but no values.

params.yaml is the only source of values: a missing section or key is an error, as is an unknown
key, a wrong type or an out-of-range value, each reported with its dotted name before any heavy work
starts. Tests load params.yaml and override what they change (`dataclasses.replace`).
"""
import dataclasses
import math
import string
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import PipelineError

PARAMS_FILE = Path("params.yaml")


@dataclass(frozen=True)
class DataParams:
    raw_dir: str  # filled by `python -m stages.fetch_data`
    train_split: str
    eval_split: str
    train_size: int | None  # stratified by label; None = every gold pair
    eval_size: int | None  # None = the whole split
    seed: int

    def check(self):
        for name in ("train_size", "eval_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise PipelineError(f"params.yaml: data.{name} must be > 0 or null, got {value}")


@dataclass(frozen=True)
class ModelParams:
    # A hub id (pin `revision`), a local directory, a .gguf file, or <installed package>/<file>.gguf.
    name: str
    revision: str | None
    trust_remote_code: bool
    quant_type: str
    double_quant: bool
    compute_dtype: str  # auto: bfloat16 on a GPU that has it, float32 otherwise

    def check(self):
        if self.quant_type not in ("nf4", "fp4"):
            raise PipelineError(f"params.yaml: model.quant_type must be nf4 or fp4, got {self.quant_type!r}")
        if self.compute_dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise PipelineError(f"params.yaml: model.compute_dtype must be auto, bfloat16, float16 or float32, "
                                f"got {self.compute_dtype!r}")


@dataclass(frozen=True)
class PromptParams:
    template: str
    # Continuations scored for labels 0, 1, 2 (entailment, neutral, contradiction), leading space included.
    verbalizers: list[str]
    max_length: int  # tokens of prompt + answer; longer prompts lose their start (counted)

    def check(self):
        if len(self.verbalizers) != 3 or len(set(self.verbalizers)) != 3 or not all(self.verbalizers):
            raise PipelineError("params.yaml: prompt.verbalizers must be 3 distinct non-empty strings")
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(self.template) if name is not None}
        except ValueError as err:
            raise PipelineError(f"params.yaml: prompt.template: {err} "
                                "(a literal brace is written {{ or }})") from err
        unknown = sorted(fields - {"premise", "hypothesis"})
        if unknown:
            raise PipelineError(f"params.yaml: prompt.template: {{{unknown[0]}}} is not a field; only {{premise}} "
                                "and {hypothesis} are filled in (a literal brace is written {{ or }})")
        for key in ("premise", "hypothesis"):
            if key not in fields:
                raise PipelineError(f"params.yaml: prompt.template must contain {{{key}}}")
        if self.max_length < 8:
            raise PipelineError(f"params.yaml: prompt.max_length must be >= 8, got {self.max_length}")


@dataclass(frozen=True)
class LoraParams:
    r: int
    alpha: int
    dropout: float
    target_modules: list[str]

    def check(self):
        if self.r <= 0 or self.alpha <= 0:
            raise PipelineError(f"params.yaml: lora.r and lora.alpha must be > 0, got {self.r}, {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise PipelineError(f"params.yaml: lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise PipelineError("params.yaml: lora.target_modules must name at least one module")


@dataclass(frozen=True)
class TrainParams:
    epochs: float
    max_steps: int  # > 0 stops after that many optimizer steps (tiny runs, tests)
    batch_size: int  # the global batch: pairs one optimizer step averages over, whatever the hardware
    micro_batch_size: int | None  # pairs per forward pass and process; None = the largest that fits the device
    lr: float
    lr_scheduler: str
    warmup_ratio: float
    weight_decay: float
    optim: str
    gradient_checkpointing: bool  # recompute activations: less memory, ~1/3 more compute
    checkpoint_every_n_layers: int  # with checkpointing: only every n-th layer (memory given back to speed)
    group_by_length: bool  # batches of similar length waste less on padding
    answer_logits_only: bool  # LM head on the answer positions only, not on every token
    tf32: bool  # TF32 tensor cores for fp32 matmuls (adapter_dtype float32, fp32 runs; GPU only)
    fp32_upcast: bool  # prepare_model_for_kbit_training's fp32 norms/embeddings: memory, no gain in bf16
    # compute: adapters in the model's compute dtype if that is bf16 (a GPU): no casts, a third less
    # activation memory. float32: peft's default, each adapter casts its input to fp32 and its output back.
    adapter_dtype: str
    compile: bool  # torch.compile each decoder layer: fewer, fused kernels, after a one-off compile
    activation_memory_budget: float  # with compile: share of activations kept; the rest recomputed
    # once: the frozen 4-bit base also kept dequantized (2 bytes a weight), no dequantization per matmul;
    # per_matmul: dequantized inside every matmul (QLoRA's memory); auto: once if that is <= 1/16 of the device
    dequantize_base: str
    # replay each batch shape's step as a CUDA graph (batches padded to batches.length_bucket) where the run
    # allows it: no checkpointing, not fp16 (graphs.py)
    cuda_graphs: bool
    logging_steps: int
    save_steps: int  # checkpoint interval; a killed run resumes from the last checkpoint
    seed: int

    def check(self):
        for name in ("batch_size", "checkpoint_every_n_layers", "logging_steps", "save_steps"):
            if getattr(self, name) <= 0:
                raise PipelineError(f"params.yaml: train.{name} must be > 0, got {getattr(self, name)}")
        if self.micro_batch_size is not None and not 0 < self.micro_batch_size <= self.batch_size:
            raise PipelineError(f"params.yaml: train.micro_batch_size must be in [1, train.batch_size] or null, "
                                f"got {self.micro_batch_size}")
        if not self.lr > 0 or not math.isfinite(self.lr):  # NaN fails every comparison
            raise PipelineError(f"params.yaml: train.lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.weight_decay < math.inf:
            raise PipelineError("params.yaml: train.weight_decay must be a finite number >= 0, "
                                f"got {self.weight_decay}")
        from transformers.training_args import OptimizerNames

        if self.optim not in {o.value for o in OptimizerNames}:
            raise PipelineError(f"params.yaml: train.optim {self.optim!r} is not an optimizer Trainer knows "
                                f"(e.g. adamw_torch_fused, adamw_torch, sgd, paged_adamw_8bit)")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise PipelineError("params.yaml: train.epochs or train.max_steps must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise PipelineError(f"params.yaml: train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 < self.activation_memory_budget <= 1:
            raise PipelineError("params.yaml: train.activation_memory_budget must be in (0, 1], got "
                                f"{self.activation_memory_budget}")
        # Switches that only act together with another one: say so rather than ignore them.
        if self.activation_memory_budget < 1 and not self.compile:
            raise PipelineError("params.yaml: train.activation_memory_budget < 1 acts only with train.compile: true")
        if self.checkpoint_every_n_layers > 1 and not self.gradient_checkpointing:
            raise PipelineError("params.yaml: train.checkpoint_every_n_layers > 1 acts only with "
                                "train.gradient_checkpointing: true")
        if self.dequantize_base not in ("auto", "once", "per_matmul"):
            raise PipelineError("params.yaml: train.dequantize_base must be auto, once or per_matmul, "
                                f"got {self.dequantize_base!r}")
        if self.adapter_dtype not in ("float32", "compute"):
            raise PipelineError("params.yaml: train.adapter_dtype must be float32 or compute, "
                                f"got {self.adapter_dtype!r}")


@dataclass(frozen=True)
class EvalParams:
    batch_size: int  # most pairs per forward pass (three labels packed in each row); halved while it does not fit

    def check(self):
        if self.batch_size <= 0:
            raise PipelineError(f"params.yaml: eval.batch_size must be > 0, got {self.batch_size}")


@dataclass(frozen=True)
class BaselinesParams:
    # Contextual calibration: the label scores minus the model's label prior on inputs whose premise
    # and hypothesis are each of these content-free strings.
    content_free: list[str]
    shots: int  # k-shot in context: k training pairs, k/3 of each label, before every prompt; 0 = none
    seed: int  # which training pairs are shown, and in which order

    def check(self):
        if not self.content_free:
            raise PipelineError("params.yaml: baselines.content_free needs at least one string")
        if self.shots < 0 or self.shots % 3:
            raise PipelineError(f"params.yaml: baselines.shots must be 0 or a multiple of 3 (balanced over the "
                                f"three labels), got {self.shots}")


@dataclass(frozen=True)
class ControlParams:
    hypothesis_only: bool  # true: fine-tune and score a control that never sees the premise


@dataclass(frozen=True)
class ComputeParams:
    # data-parallel processes; null = every visible GPU for a base of >= 1 B parameters, else one
    processes: int | None

    def check(self):
        if self.processes is not None and self.processes <= 0:
            raise PipelineError(f"params.yaml: compute.processes must be > 0 or null, got {self.processes}")


@dataclass(frozen=True)
class AnalyzeParams:
    examples_per_kind: int
    seed: int

    def check(self):
        if self.examples_per_kind < 0:
            raise PipelineError(f"params.yaml: analyze.examples_per_kind must be >= 0, got {self.examples_per_kind}")


SECTIONS = {"data": DataParams, "model": ModelParams, "prompt": PromptParams, "lora": LoraParams,
            "train": TrainParams, "eval": EvalParams, "baselines": BaselinesParams, "control": ControlParams,
            "compute": ComputeParams, "analyze": AnalyzeParams}


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


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key written twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _read(path):
    try:
        return yaml.load(Path(path).read_text(), Loader=_UniqueKeyLoader) or {}
    except OSError as err:
        raise PipelineError(f"{path}: cannot read params: {err}") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise PipelineError(f"{path}: {where}{getattr(err, 'problem', None) or err}".splitlines()[0]) from err


def load(section, path=PARAMS_FILE, **changes):
    """Read one section of params.yaml into its dataclass (every key must be there), with `changes`
    (tests, benchmarks) applied before the checks."""
    raw = _read(path)
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: expected a mapping of sections")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise PipelineError(f"{path}: unknown section {unknown[0]!r} (known: {', '.join(SECTIONS)})")
    cls = SECTIONS[section]
    if section not in raw:
        raise PipelineError(f"{path}: missing section {section!r}")
    values = raw[section]
    if not isinstance(values, dict):
        raise PipelineError(f"{path}: section {section!r} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise PipelineError(f"{path}: unknown key {section}.{unknown[0]} (known: {', '.join(fields)})")
    missing = [name for name in fields if name not in values]
    if missing:
        raise PipelineError(f"{path}: missing key {section}.{missing[0]}")
    hints = typing.get_type_hints(cls)
    params = cls(**{k: _typed(v, hints[k], f"{section}.{k}") for k, v in {**values, **changes}.items()})
    if hasattr(params, "check"):  # sections whose values need more than their types checked
        params.check()
    return params
