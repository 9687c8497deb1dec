"""finetune: QLoRA on the prepared training pairs (4-bit base, LoRA adapter, loss on the answer).

Writes the adapter to models/adapter (safetensors) and metrics/finetune/: wall time, non-padding
tokens/s, peak memory, trainable and total parameters (4-bit weights counted unpacked), final loss,
and the loss curve logged by transformers' DVCLiveCallback.
"""
import math
import tempfile
import time

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import Trainer, TrainingArguments, set_seed
from transformers.integrations import DVCLiveCallback

from stages.lib import params
from stages.lib.errors import PipelineError, cli
from stages.lib.metrics import open_live, peak_memory, rounded
from stages.lib.model import compute_dtype, load_quantized, load_tokenizer
from stages.lib.paths import ADAPTER_DIR, TRAIN_FILE
from stages.lib.prompt import Encoder, TrainingCollator
from stages.lib.snli import atomic_dir, read_prepared


def add_lora(model, cfg, gradient_checkpointing):
    # The usual QLoRA preparation (norms and embeddings in fp32). Kept for stability; whether it is
    # still needed since right padding cured the NaN runs is not measured yet.
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                        target_modules=cfg.target_modules, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise PipelineError(f"params.yaml: lora.target_modules: {str(err).splitlines()[0]}") from err


def training_arguments(cfg, dtype, n_examples, output_dir):
    steps_per_epoch = math.ceil(n_examples / (cfg.batch_size * cfg.grad_accum))
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(steps_per_epoch * cfg.epochs)
    return TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        learning_rate=cfg.lr, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=math.ceil(cfg.warmup_ratio * total_steps),
        weight_decay=cfg.weight_decay, optim=cfg.optim, gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False}, logging_steps=cfg.logging_steps,
        seed=cfg.seed, data_seed=cfg.seed, bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
        report_to="none", save_strategy="no", remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding", disable_tqdm=True,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random")


@cli
def main():
    model_cfg, prompt_cfg = params.load("model"), params.load("prompt")
    lora_cfg, train_cfg = params.load("lora"), params.load("train")
    set_seed(train_cfg.seed)
    tokenizer = load_tokenizer(model_cfg)
    collator = TrainingCollator(Encoder(tokenizer, prompt_cfg))
    examples = [collator.example(row) for row in read_prepared(TRAIN_FILE)]
    model = add_lora(load_quantized(model_cfg), lora_cfg, train_cfg.gradient_checkpointing)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    live = open_live("finetune")
    with tempfile.TemporaryDirectory() as scratch:
        args = training_arguments(train_cfg, compute_dtype(model_cfg), len(examples), scratch)
        trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=collator,
                          callbacks=[DVCLiveCallback(live=live)])
        started = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - started
        with atomic_dir(ADAPTER_DIR) as staging:
            model.save_pretrained(staging, safe_serialization=True)
    if not all(torch.isfinite(p).all() for p in model.parameters() if p.requires_grad):
        raise PipelineError("finetune: training diverged (the adapter holds NaN or inf); lower train.lr "
                            "or set model.compute_dtype: float32")
    trainable, total = model.get_nb_trainable_parameters()
    tokens = trainer.state.num_input_tokens_seen
    logged_losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    summary = {
        "train_seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
        "examples": len(examples), "steps": trainer.state.global_step,
        "final_loss": logged_losses[-1] if logged_losses else result.training_loss, "mean_loss": result.training_loss,
        "truncated_prompts": collator.encoder.truncated,
        # peft counts a 4-bit weight as the two values each packed byte holds, so totals are real.
        "params": {"trainable": trainable, "total": total, "base_model": total - trainable,
                   "trainable_pct": 100 * trainable / total},
        "memory": peak_memory(),
    }
    live.summary.update(rounded(summary))
    live.make_summary()
    print(f"finetune: {trainer.state.global_step} steps in {seconds:.1f} s, {tokens / seconds:.0f} tokens/s, "
          f"mean loss {result.training_loss:.4f}, trainable {trainable:,} of {total:,} params")


if __name__ == "__main__":
    main()
