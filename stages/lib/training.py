"""The fine-tuning Trainer, in one place for the finetune stage and bench/train.py.

A 4-bit base with a LoRA adapter, the loss on the answer tokens (TrainingCollator), every knob from
the `train:` params, and a callback that times the steps after a warm-up.
"""
import torch
from accelerate.utils.other import is_repeated_blocks
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from .errors import PipelineError
from .metrics import synced_clock
from .model import cast_adapter, compute_dtype, load_quantized, load_tokenizer
from .nf4 import use_torch_ops
from .prompt import Encoder, TrainingCollator


def add_lora(model, cfg, train_cfg, dtype):
    if train_cfg.fp32_upcast:  # the classic QLoRA recipe: norms, embeddings and head in fp32
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                        target_modules=cfg.target_modules, task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, config)
    except ValueError as err:
        raise PipelineError(f"params.yaml: lora.target_modules: {str(err).splitlines()[0]}") from err
    # fp16 keeps fp32 adapters: its loss scaler refuses fp16 gradients.
    if train_cfg.adapter_dtype == "compute" and dtype == torch.bfloat16:
        cast_adapter(model, dtype)
    return model


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


def training_arguments(cfg, dtype, output_dir):
    return TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        learning_rate=cfg.lr, lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # below 1: Trainer reads it as a share of the steps it counts itself
        weight_decay=cfg.weight_decay, optim=cfg.optim, gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False, "every_n_layers": cfg.checkpoint_every_n_layers},
        logging_steps=cfg.logging_steps,
        seed=cfg.seed, data_seed=cfg.seed, fp16=dtype == torch.float16,
        # Autocast only for a mixed-precision model: it would run norms in fp32 and keep fp32 copies of
        # activations for a model that is bf16 throughout.
        bf16=dtype == torch.bfloat16 and cfg.fp32_upcast,
        report_to="none", save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=1,
        remove_unused_columns=False, include_num_input_tokens_seen="non_padding", disable_tqdm=True,
        logging_nan_inf_filter=False,  # its per-step isnan check stalls the GPU; a NaN loss shows in the log
        logging_first_step=True, ddp_find_unused_parameters=False, use_cpu=not torch.cuda.is_available(),
        tf32=cfg.tf32 if torch.cuda.is_available() else None,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random")


class Throughput(TrainerCallback):
    """Seconds and non-padding tokens of `steps` of this session's steps (all of them if None),
    after `skip_steps` warm-up steps. The GPU is synchronized at the two ends only.

    Trainer's own train_tokens_per_second divides every token seen, a resumed run's earlier ones
    included, by this session's runtime; this counts the session's steps only.
    """

    def __init__(self, skip_steps=0, steps=None):
        self.skip_steps, self.timed_steps, self.steps = skip_steps, steps, 0
        self.start = self.tokens_at_start = None
        self.seconds = self.tokens = 0
        self.done = False

    def on_step_begin(self, args, state, control, **kwargs):
        if self.steps == self.skip_steps and self.start is None:
            self.start, self.tokens_at_start = synced_clock(), state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1
        if self.timed_steps is not None and self.steps == self.skip_steps + self.timed_steps:
            self._stop(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._stop(state)

    def _stop(self, state):
        if self.start is not None and not self.done:
            self.seconds = synced_clock() - self.start
            self.tokens = state.num_input_tokens_seen - self.tokens_at_start
            self.done = True


def build_trainer(model_cfg, prompt_cfg, lora_cfg, train_cfg, rows, output_dir, callbacks=()):
    """The Trainer the stage runs (also what bench/train.py times)."""
    set_seed(train_cfg.seed)
    tokenizer = load_tokenizer(model_cfg)
    # Compiled layers specialize on the batch length being a multiple of 8: the other lengths cost
    # a second compilation and run a slower, unaligned variant.
    collator = TrainingCollator(Encoder(tokenizer, prompt_cfg), train_cfg.answer_logits_only,
                                pad_to_multiple_of=8 if train_cfg.compile else 1)
    examples = collator.examples(rows)
    dtype = compute_dtype(model_cfg)
    model = add_lora(load_quantized(model_cfg), lora_cfg, train_cfg, dtype)
    model.config.use_cache = False  # a KV cache is for generation; building one per layer also breaks compile's reuse
    if train_cfg.compile:
        # Inductor keeps this share of each layer's activations for the backward pass and recomputes
        # the rest, cheapest first: memory for a larger batch without full checkpointing.
        torch._functorch.config.activation_memory_budget = train_cfg.activation_memory_budget
        compile_layers(model)
    args = training_arguments(train_cfg, dtype, str(output_dir))
    # processing_class: Trainer counts non-padding tokens by the pad id (batches carry no attention mask)
    return Trainer(model=model, args=args, train_dataset=examples, data_collator=collator, processing_class=tokenizer,
                   callbacks=list(callbacks))
