"""The fine-tuning Trainer, in one place for the finetune stage and bench/train.py.

A 4-bit base with a LoRA adapter, the loss on the answer tokens (TrainingCollator), every knob from
the `train:` params. `train.batch_size` is the global batch: the run's example order is fixed by the
seed and that batch alone (`schedule`), and each optimizer step averages the loss over the answer
tokens of one global batch (Trainer's `num_items_in_batch`), however many processes share it and
however many micro-batches each accumulates. So one GPU, two GPUs, or one GPU with a smaller
micro-batch train the same model up to the order of floating-point sums.
"""
import functools
import math
from dataclasses import dataclass

import torch
from accelerate.utils.other import is_repeated_blocks
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import ExportableState, PrinterCallback
from transformers.trainer_pt_utils import get_length_grouped_indices
from transformers.utils.import_utils import enable_tf32

from . import distributed, graphs
from .batches import TrainingCollator, length_bucket, multiple_of_8
from .errors import PipelineError, first_line
from .memory import device_memory_bytes, largest_fitting
from .measure import synced_clock
from .model import cast_adapter, compute_dtype, load_quantized, load_tokenizer
from .nf4 import dequantized_bytes, keep_dequantized, use_torch_ops
from .progress import Progress
from .prompt import Encoder


def add_lora(model, cfg, train_cfg, dtype):
    if train_cfg.fp32_upcast:  # the classic QLoRA recipe: norms, embeddings and head in fp32
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    check_target_modules(model, cfg.target_modules)
    config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                        target_modules=sorted(cfg.target_modules), task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, config)
    except ValueError as err:
        raise PipelineError(f"params.yaml: lora.target_modules: {first_line(err)}") from err
    # fp16 keeps fp32 adapters: its loss scaler refuses fp16 gradients.
    if train_cfg.adapter_dtype == "compute" and dtype == torch.bfloat16:
        cast_adapter(model, dtype)
    return model


def check_target_modules(model, names):
    """Every listed name must match a module (peft would train the others and say nothing of a typo)."""
    import difflib

    modules = [name for name, _ in model.named_modules()]
    present = sorted({name.rsplit(".", 1)[-1] for name in modules})
    for name in names:  # peft's rule: a module matches by its full name or a dotted suffix of it
        if not any(m == name or m.endswith("." + name) for m in modules):
            near = difflib.get_close_matches(name, present, n=3) or present[:5]
            raise PipelineError(f"params.yaml: lora.target_modules: no module named {name!r} in the model "
                                f"(nearest: {', '.join(near)})")


TRAINING_ATTENTION = "sdpa_causal_unmasked"


def causal_attention_without_mask(model):
    """SDPA whose causal mask is left to the kernel whenever a batch carries no attention mask.

    Training batches carry none: they are right-padded, so causal attention never reaches the padding
    before an answer token. transformers then skips the mask only after reading the position ids on
    the host (are several sequences packed in a row?). A CUDA graph's recording may not read the GPU,
    so there it builds an explicit mask: SDPA falls back from its flash kernel, and compiled layers
    recompile mid-recording, which fails. Sliding windows and real masks are built as before.
    """
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask

    def mask(*args, attention_mask=None, local_size=None, **kwargs):
        if attention_mask is None and local_size is None:
            return None
        return sdpa_mask(*args, attention_mask=attention_mask, local_size=local_size, **kwargs)

    if model.config._attn_implementation == "sdpa":
        AttentionInterface.register(TRAINING_ATTENTION, sdpa_attention_forward)
        AttentionMaskInterface.register(TRAINING_ATTENTION, mask)
        model.set_attn_implementation(TRAINING_ATTENTION)


def dequantizes_once(model, cfg, dtype):
    """Whether `train.dequantize_base` keeps the base dequantized: `once`, or `auto` when that costs at
    most 1/16 of the device's memory (what that means for SmolLM2 and phi-2: docs/benchmarks.md)."""
    if cfg.dequantize_base != "auto":
        return cfg.dequantize_base == "once"
    device = next(model.parameters()).device
    return dequantized_bytes(model, dtype) <= device_memory_bytes(device) / 16


def compile_layers(module):
    """torch.compile each repeated block (the decoder layers) in place, shapes dynamic.

    One compilation serves every layer and every batch length (regional compilation); inside a
    layer the 4-bit matmuls, LoRA and elementwise ops run as a few fused kernels, not hundreds of
    separately launched ones. The NF4 matmuls are swapped to torch ops that inductor can fuse.
    """
    if is_repeated_blocks(module):
        for block in module:
            use_torch_ops(block)
            block.compile(dynamic=True)
        return
    for child in module.children():
        compile_layers(child)


@dataclass(frozen=True)
class BatchLayout:
    """How one global batch is shared out: processes x micro-batch x accumulation = batch_size."""
    batch_size: int
    processes: int
    micro_batch_size: int

    @property
    def accumulation(self):
        return self.batch_size // (self.processes * self.micro_batch_size)

    def as_metrics(self):
        return {"batch_size": self.batch_size, "processes": self.processes,
                "micro_batch_size": self.micro_batch_size, "accumulation_steps": self.accumulation}


def micro_batch_choices(batch_size, processes):
    """Micro-batches that split a process's share of the global batch evenly, largest first."""
    if batch_size % processes:
        raise PipelineError(f"params.yaml: train.batch_size ({batch_size}) must be a multiple of the process "
                            f"count ({processes}, compute.processes)")
    share = batch_size // processes
    return [m for m in range(share, 0, -1) if share % m == 0]


def schedule(lengths, cfg):
    """(example order of the whole run, optimizer steps): a whole number of global batches.

    Epoch e is a permutation seeded by `train.seed + e` (grouped by length in global batches when
    `group_by_length`); the epochs are concatenated and cut at the last step. The order depends on
    nothing but the data and the params, so a resumed run, or one on other hardware, sees the same
    global batches; Trainer reads it sequentially.
    """
    steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epochs * len(lengths) / cfg.batch_size)
    order, epoch = [], 0
    while len(order) < steps * cfg.batch_size:
        generator = torch.Generator().manual_seed(cfg.seed + epoch)
        if cfg.group_by_length:
            order += get_length_grouped_indices(lengths, cfg.batch_size, generator=generator)
        else:
            order += torch.randperm(len(lengths), generator=generator).tolist()
        epoch += 1
    return order[:steps * cfg.batch_size], steps


def fitting_micro_batch(model, collator, examples, choices):
    """The largest of `choices` whose forward and backward pass on the longest examples fits the GPU.

    A measured probe, not an estimate: memory depends on the model, the vocabulary, checkpointing
    and compile. Random state and gradients are left as they were.
    """
    longest = sorted(examples, key=lambda e: len(e["input_ids"]), reverse=True)
    device = next(model.parameters()).device
    model.train()

    def forward_and_backward(size):
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collator(longest[:size]).items()}
                model(**batch).loss.backward()
        finally:
            model.zero_grad(set_to_none=True)

    size = largest_fitting(choices, forward_and_backward)
    if not size:
        raise PipelineError("finetune: one pair per forward pass does not fit the GPU; lower prompt.max_length "
                            "or set train.gradient_checkpointing: true in params.yaml")
    return size


def batch_layout(cfg, processes, model=None, collator=None, examples=None):
    """The layout the run uses: `train.micro_batch_size` if pinned, else the largest that fits."""
    choices = micro_batch_choices(cfg.batch_size, processes)
    if cfg.micro_batch_size is not None:
        if cfg.micro_batch_size not in choices:
            raise PipelineError(f"params.yaml: train.micro_batch_size ({cfg.micro_batch_size}) must divide "
                                f"train.batch_size / processes ({cfg.batch_size // processes})")
        return BatchLayout(cfg.batch_size, processes, cfg.micro_batch_size)
    if model is None or not torch.cuda.is_available():  # a CPU takes the whole share: host memory is large
        return BatchLayout(cfg.batch_size, processes, choices[0])
    size = distributed.agree_on_min(fitting_micro_batch(model, collator, examples, choices))
    return BatchLayout(cfg.batch_size, processes, size)


def training_arguments(cfg, layout, steps, dtype, output_dir):
    return TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=layout.micro_batch_size,
        gradient_accumulation_steps=layout.accumulation, max_steps=steps,
        learning_rate=cfg.lr, lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # below 1: Trainer reads it as a share of the steps
        weight_decay=cfg.weight_decay, optim=cfg.optim, activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False, "every_n_layers": cfg.checkpoint_every_n_layers},
        logging_steps=cfg.logging_steps,
        seed=cfg.seed, data_seed=cfg.seed, fp16=dtype == torch.float16,
        # Autocast only for a mixed-precision model: it would run norms in fp32 and keep fp32 copies of
        # activations for a model that is bf16 throughout.
        bf16=dtype == torch.bfloat16 and cfg.fp32_upcast,
        report_to="none", save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=1,
        restore_callback_states_from_checkpoint=True,  # Throughput's totals and the run fingerprint
        train_sampling_strategy="sequential",  # `schedule` already fixed the order
        average_tokens_across_devices=True,  # the loss averages over the global batch's answer tokens
        # Throughput counts tokens from the schedule: Trainer's count reads a GPU scalar back every step,
        # a sync that leaves the GPU idle while the host launches the next kernels.
        remove_unused_columns=False, include_num_input_tokens_seen="no", disable_tqdm=True,
        logging_nan_inf_filter=False,  # its per-step isnan check stalls the GPU; a NaN loss shows in the log
        logging_first_step=True, ddp_find_unused_parameters=False, use_cpu=not torch.cuda.is_available(),
        # Batches go to the GPU from pinned memory without a sync: a blocking copy makes the host wait
        # for the previous micro-batch's kernels, and the GPU then waits for the host.
        accelerator_config={"non_blocking": torch.cuda.is_available()},
        tf32=None)  # set by build_trainer before the micro-batch probe


class Throughput(TrainerCallback, ExportableState):
    """Seconds and non-padding tokens of `steps` steps (all of them if None), after `skip_steps`
    warm-up steps. The GPU is synchronized at the two ends only.

    Tokens are counted from the training list, which is the run's whole order (`schedule`): step k
    trains its k-th global batch, so no count is read back from the GPU. Its totals are saved with each
    checkpoint and restored on resume (Trainer's stateful callbacks), so a resumed run reports the
    whole run: the earlier sessions' part up to the checkpoint and this session's part.
    """

    def __init__(self, skip_steps=0, steps=None):
        self.skip_steps, self.timed_steps, self.steps = skip_steps, steps, 0
        self.start = self.step_at_start = self.trainer_state = None
        self.tokens_through_step = [0]  # non-padding tokens of the first k global batches
        self.seconds_before = self.tokens_before = 0  # restored from a checkpoint
        self.seconds = self.tokens = 0
        self.done = False

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        lengths = [len(example["input_ids"]) for example in train_dataloader.dataset]
        for first in range(0, len(lengths), batch):
            self.tokens_through_step.append(self.tokens_through_step[-1] + sum(lengths[first:first + batch]))

    def on_step_begin(self, args, state, control, **kwargs):
        self.trainer_state = state
        if self.steps == self.skip_steps and self.start is None:
            self.start, self.step_at_start = synced_clock(), state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1
        if self.timed_steps is not None and self.steps == self.skip_steps + self.timed_steps:
            self._stop(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._stop(state)

    def _totals(self, state):
        if self.start is None:
            return self.seconds_before, self.tokens_before
        return (self.seconds_before + synced_clock() - self.start, self.tokens_before
                + self.tokens_through_step[state.global_step] - self.tokens_through_step[self.step_at_start])

    def _stop(self, state):
        if not self.done:
            self.seconds, self.tokens = self._totals(state)
            self.done = True

    def state(self):
        seconds, tokens = (self.seconds, self.tokens) if self.done else self._totals(self.trainer_state)
        return {"args": {"skip_steps": self.skip_steps, "steps": self.timed_steps},
                "attributes": {"seconds_before": seconds, "tokens_before": tokens}}


def release_data_parallel(trainer):
    """Drop the data-parallel wrapper (and accelerate's references to it) while the process group is
    alive. Freed after the group is destroyed, its reducer would hold the last reference to the group,
    and the group's destructor would wait for gloo threads that need the GIL it holds: a hang at exit."""
    trainer.accelerator.free_memory()
    trainer.model_wrapped = trainer.model


class StepProgress(TrainerCallback):
    """Plain progress lines with the step count, the loss and an estimate of the time left, in place of
    Trainer's printed log dicts (its tqdm bar floods a log file with carriage returns)."""

    def __init__(self, stage):
        self.stage = stage

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress = Progress(self.stage, state.max_steps, unit="steps", done=state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.progress.printed == 0:  # an early estimate of the time left
            self.progress.update(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "loss" in logs:
            self.progress.update(state.global_step, f"loss {logs['loss']:.4f}")


class RunFingerprint(TrainerCallback, ExportableState):
    """Saved inside every checkpoint's trainer_state.json: what the checkpoint was made from."""

    def __init__(self, fingerprint):
        self.fingerprint = fingerprint

    def state(self):
        return {"args": {"fingerprint": self.fingerprint}, "attributes": {}}


def build_trainer(model_cfg, prompt_cfg, lora_cfg, train_cfg, rows, output_dir, callbacks=(), stage="finetune"):
    """(the Trainer the stage runs, its BatchLayout); also what bench/train.py times."""
    set_seed(train_cfg.seed)
    tokenizer = load_tokenizer(model_cfg)
    dtype = compute_dtype(model_cfg)
    graphed = graphs.usable(train_cfg, dtype)
    collator = TrainingCollator(Encoder(tokenizer, prompt_cfg), train_cfg.answer_logits_only,
                                round_up=length_bucket if graphed else multiple_of_8 if train_cfg.compile else None)
    examples = collator.examples(rows)
    if torch.cuda.is_available():  # before the probe: compiled layers guard on it
        enable_tf32(train_cfg.tf32)
    base = load_quantized(model_cfg)
    causal_attention_without_mask(base)
    model = add_lora(base, lora_cfg, train_cfg, dtype)
    model.config.use_cache = False  # a KV cache is for generation; building one per layer also breaks compile's reuse
    if dequantizes_once(model, train_cfg, dtype):
        keep_dequantized(model, dtype)
    if train_cfg.compile:
        # Inductor keeps this share of each layer's activations for the backward pass and recomputes
        # the rest, cheapest first: memory for a larger batch without full checkpointing.
        torch._functorch.config.activation_memory_budget = train_cfg.activation_memory_budget
        compile_layers(model)
    if train_cfg.gradient_checkpointing:  # as Trainer will, so that the probe measures what training runs
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False},
                                              every_n_layers=train_cfg.checkpoint_every_n_layers)
    layout = batch_layout(train_cfg, distributed.world_size(), model, collator, examples)
    order, steps = schedule([len(e["input_ids"]) for e in examples], train_cfg)
    args = training_arguments(train_cfg, layout, steps, dtype, str(output_dir))
    make = functools.partial(graphs.GraphedTrainer, stage=stage) if graphed else Trainer
    trainer = make(model=model, args=args, train_dataset=[examples[i] for i in order], data_collator=collator,
                   processing_class=tokenizer, callbacks=[*callbacks, StepProgress(stage)])
    trainer.remove_callback(PrinterCallback)
    return trainer, layout
