"""finetune: QLoRA on the prepared training pairs (4-bit base, LoRA adapter, loss on the answer).

Writes the adapter to models/adapter (safetensors) and metrics/finetune/: wall time, non-padding
tokens/s, peak memory, trainable and total parameters (4-bit weights counted unpacked), final loss,
and the loss curve logged by transformers' DVCLiveCallback. Checkpoints go to models/checkpoints
(a persisted output); a run that was killed resumes from the last one made with the same inputs.
With `compute.processes` > 1 it runs data-parallel under torchrun.
"""
import dataclasses
import hashlib
import json
import shutil
import sys

import torch
from transformers.integrations import DVCLiveCallback

from stages.lib import distributed, params
from stages.lib.errors import PipelineError, cli
from stages.lib.metrics import open_live, out_of_memory, peak_memory, rounded
from stages.lib.model import source
from stages.lib.paths import ADAPTER_DIR, CHECKPOINT_DIR, TRAIN_FILE
from stages.lib.snli import atomic_dir, atomic_path, read_prepared
from stages.lib.training import Throughput, build_trainer

RUN_FILE = CHECKPOINT_DIR / "run.json"  # what the checkpoints were made from


def run_fingerprint(sections, compute_cfg):
    """Hash of the params and training data the checkpoints depend on, and the process count."""
    digest = hashlib.sha256(TRAIN_FILE.read_bytes())
    digest.update(json.dumps([dataclasses.asdict(s) for s in (*sections, compute_cfg)], sort_keys=True).encode())
    return {"fingerprint": digest.hexdigest(), "processes": distributed.process_count(compute_cfg)}


def keep_matching_checkpoints(run):
    """Keep the checkpoints of an interrupted run with the same inputs; remove any others."""
    if RUN_FILE.is_file() and json.loads(RUN_FILE.read_text()) == run:
        return
    shutil.rmtree(CHECKPOINT_DIR, ignore_errors=True)
    CHECKPOINT_DIR.mkdir(parents=True)
    with atomic_path(RUN_FILE) as tmp:
        tmp.write_text(json.dumps(run, indent=2) + "\n")


def last_complete_checkpoint():
    """The newest checkpoint Trainer finished writing (trainer_state.json is the last file it writes)."""
    done = [p for p in CHECKPOINT_DIR.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return str(max(done, key=lambda p: int(p.name.rsplit("-", 1)[1]))) if done else None


def train(trainer, resume_from, train_cfg, prompt_cfg):
    try:
        return trainer.train(resume_from_checkpoint=resume_from)
    except torch.OutOfMemoryError as err:
        raise out_of_memory("finetune", f"train.batch_size ({train_cfg.batch_size}), prompt.max_length "
                            f"({prompt_cfg.max_length}), or set train.gradient_checkpointing: true") from err


def summary(trainer, throughput):
    model = trainer.model
    trainable, total = model.get_nb_trainable_parameters()
    logged_losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "train_seconds": throughput.seconds, "tokens": throughput.tokens,
        "tokens_per_s": throughput.tokens / throughput.seconds if throughput.seconds else 0.0,
        "examples": len(trainer.train_dataset), "steps": trainer.state.global_step,
        # From the log history, which a resumed run restores with its checkpoint.
        "final_loss": logged_losses[-1], "mean_loss": sum(logged_losses) / len(logged_losses),
        "truncated_prompts": trainer.data_collator.encoder.truncated, "processes": distributed.world_size(),
        # peft counts a 4-bit weight as the two values each packed byte holds, so totals are real.
        "params": {"trainable": trainable, "total": total, "base_model": total - trainable,
                   "trainable_pct": 100 * trainable / total},
    }


@cli
def main():
    model_cfg, prompt_cfg = params.load("model"), params.load("prompt")
    lora_cfg, train_cfg, compute_cfg = params.load("lora"), params.load("train"), params.load("compute")
    if distributed.is_launcher():
        source(model_cfg)  # convert a GGUF once, before any workers start
        keep_matching_checkpoints(run_fingerprint((model_cfg, prompt_cfg, lora_cfg, train_cfg), compute_cfg))
    distributed.relaunch("stages.finetune", sys.argv[1:], compute_cfg)
    distributed.init()
    resume_from = last_complete_checkpoint()
    if resume_from:
        print(f"finetune: resuming from {resume_from} (step {resume_from.rsplit('-', 1)[1]})", flush=True)
    throughput = Throughput()
    live = open_live("finetune") if distributed.is_main() else None  # DVCLiveCallback logs on rank 0 only
    trainer = build_trainer(model_cfg, prompt_cfg, lora_cfg, train_cfg, read_prepared(TRAIN_FILE), CHECKPOINT_DIR,
                            [throughput, DVCLiveCallback(live=live)])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train(trainer, resume_from, train_cfg, prompt_cfg)
    memory = distributed.gather(peak_memory())
    if not all(torch.isfinite(p).all() for p in trainer.model.parameters() if p.requires_grad):
        raise PipelineError("finetune: training diverged (the adapter holds NaN or inf); lower train.lr "
                            "or set model.compute_dtype: float32")
    if not distributed.is_main():
        return
    with atomic_dir(ADAPTER_DIR) as staging:
        trainer.model.save_pretrained(staging, safe_serialization=True)
    for finished in CHECKPOINT_DIR.glob("checkpoint-*"):  # the run is complete: nothing to resume
        shutil.rmtree(finished)
    metrics = summary(trainer, throughput) | {"memory": memory[0]}
    metrics["resumed_from_step"] = int(resume_from.rsplit("-", 1)[1]) if resume_from else 0
    if len(memory) > 1:
        metrics["memory_per_process"] = {f"rank{r}": m for r, m in enumerate(memory)}
    live.summary.update(rounded(metrics))
    live.make_summary()
    print(f"finetune: {metrics['steps']} steps in {metrics['train_seconds']:.1f} s, {metrics['tokens_per_s']:.0f} "
          f"tokens/s on {metrics['processes']} process(es), mean loss {metrics['mean_loss']:.4f}, "
          f"trainable {metrics['params']['trainable']:,} of {metrics['params']['total']:,} params")


if __name__ == "__main__":
    main()
