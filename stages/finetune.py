"""finetune: QLoRA on the prepared training pairs (4-bit base, LoRA adapter, loss on the answer).

Writes the adapter to models/adapter (safetensors, naming its base model portably) and
metrics/finetune/: wall time, non-padding tokens/s, peak memory, trainable and total parameters
(4-bit weights counted unpacked), the batch layout that ran, the loss, and the loss curve.
Checkpoints go to models/checkpoints (never pushed); each one carries the fingerprint of what made
it, and a killed run resumes from the newest one whose fingerprint matches. With more than one
process it runs data-parallel (one worker process per GPU), on the same global batches.

    python -m stages.finetune              # the adapter
    python -m stages.finetune --control    # the hypothesis-only control (premise withheld); run by
                                           # `python -m stages.control finetune` when it is on
"""
import argparse
import hashlib
import json
import shutil
import sys
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import torch

from stages.lib import distributed, params, runtime
from stages.lib.environment import version_drift
from stages.lib.errors import PipelineError, cli, first_line, out_of_memory, run_as_program
from stages.lib.files import atomic_dir
from stages.lib.measure import peak_memory
from stages.lib.metrics import write_metrics
from stages.lib.model import relaunch_where_it_pays
from stages.lib.model_source import base_model_reference
from stages.lib.nf4 import DequantizedLinear4bit
from stages.lib.paths import ADAPTER_DIR, CHECKPOINT_DIR, CONTROL_ADAPTER_DIR, CONTROL_CHECKPOINT_DIR, TRAIN_FILE
from stages.lib.progress import cpu_hint
from stages.lib.prompt import withhold_premise
from stages.lib.snli import read_prepared
from stages.lib.training import RunFingerprint, Throughput, build_trainer, release_data_parallel

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes")
RUNS = {False: ("finetune", ADAPTER_DIR, CHECKPOINT_DIR),  # --control: (stage, adapter, checkpoints)
        True: ("finetune_control", CONTROL_ADAPTER_DIR, CONTROL_CHECKPOINT_DIR)}


def run_fingerprint(sections, layout, control=False):
    """sha256 of everything a checkpoint's continuation depends on: training data (and whether the
    premise is withheld), params, base model, batch layout, the stage's code and the library versions."""
    digest = hashlib.sha256(TRAIN_FILE.read_bytes())
    code = {Path(__file__).resolve()} | {Path(m.__file__).resolve() for n, m in list(sys.modules.items())
                                         if n.startswith("stages.") and getattr(m, "__file__", None)}
    for path in sorted(code):  # this stage's script and the library modules it imported
        digest.update(path.read_bytes())
    model_cfg = sections[0]
    described = {"params": [asdict(s) for s in sections], "base_model": base_model_reference(model_cfg),
                 "layout": layout.as_metrics(), "libraries": {name: version(name) for name in LIBRARIES},
                 "hypothesis_only": control}
    digest.update(json.dumps(described, sort_keys=True).encode())
    return digest.hexdigest()


def checkpoint_fingerprint(checkpoint):
    """The fingerprint a complete checkpoint was saved with (None if unreadable or incomplete)."""
    try:  # trainer_state.json is the last file Trainer writes into a checkpoint
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        return state["stateful_callbacks"]["RunFingerprint"]["args"]["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def resumable_checkpoint(fingerprint, checkpoint_dir):
    """The newest checkpoint made from exactly these inputs; the main process removes all others."""
    checkpoints = sorted(checkpoint_dir.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    matching = [p for p in checkpoints if checkpoint_fingerprint(p) == fingerprint]
    if distributed.is_main():
        for stale in set(checkpoints) - set(matching[-1:]):
            shutil.rmtree(stale)
    return str(matching[-1]) if matching else None


def train(trainer, resume_from, train_cfg, prompt_cfg):
    try:
        return trainer.train(resume_from_checkpoint=resume_from)
    except torch.OutOfMemoryError as err:
        raise out_of_memory("finetune", f"train.micro_batch_size ({trainer.args.per_device_train_batch_size}) or "
                            f"prompt.max_length ({prompt_cfg.max_length}), or set "
                            "train.gradient_checkpointing: true") from err


def summary(trainer, throughput, layout, rows):
    trainable, total = trainer.model.get_nb_trainable_parameters()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "train_seconds": throughput.seconds, "tokens": throughput.tokens,
        "tokens_per_s": throughput.tokens / throughput.seconds if throughput.seconds else 0.0,
        "examples": len(rows), "steps": trainer.state.global_step,
        "epochs": trainer.state.global_step * layout.batch_size / len(rows),
        # the mean answer-token loss of the last `train.logging_steps` steps, as logged
        "final_loss": losses[-1],
        "truncated_prompts": trainer.data_collator.encoder.truncated, **layout.as_metrics(),
        "base_dequantized_once": any(isinstance(m, DequantizedLinear4bit) for m in trainer.model.modules()),
        # peft counts a 4-bit weight as the two values each packed byte holds, so totals are real.
        "params": {"trainable": trainable, "total": total, "base_model": total - trainable,
                   "trainable_pct": 100 * trainable / total},
    }


def save_adapter(model, model_cfg, target):
    """The adapter, naming its base as the user wrote it (not a cache path) with a fixed key order."""
    reference = base_model_reference(model_cfg)
    config = model.peft_config["default"]
    config.base_model_name_or_path, config.revision = reference["name"], reference["revision"]
    config.target_modules = sorted(config.target_modules)  # a set, saved in hash-seed order otherwise
    # save_embedding_layers: "auto" would look the base name up on the hub (the embeddings are not trained here)
    model.save_pretrained(target, safe_serialization=True, save_embedding_layers=False)
    (target / "base_model.json").write_text(json.dumps(reference, indent=2) + "\n")
    # peft's model card names the directory the weights were loaded from: a cache path here.
    (target / "README.md").write_text(f"---\nbase_model: {reference['name']}\nlibrary_name: peft\n---\n\n"
                                      "A LoRA adapter for SNLI made by the nli-qlora `finetune` stage; its base "
                                      "model is described in base_model.json.\n")


def write_loss_curve(live, log_history):
    """The loss curve from Trainer's log history, which a resumed run restores with its checkpoint,
    so the points before an interruption keep their real step numbers."""
    for entry in log_history:
        if "loss" in entry:
            live.step = entry["step"]
            live.log_metric("loss", entry["loss"])
            live.log_metric("learning_rate", entry["learning_rate"])


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--control", action="store_true", help="the hypothesis-only control")
    control = parser.parse_args(argv).control
    stage, adapter_dir, checkpoint_dir = RUNS[control]
    runtime.configure()
    model_cfg, prompt_cfg = params.load("model"), params.load("prompt")
    lora_cfg, train_cfg, compute_cfg = params.load("lora"), params.load("train"), params.load("compute")
    drift = version_drift(stage, announce=distributed.is_launcher())
    relaunch_where_it_pays("stages.finetune", ["--control"] if control else [], model_cfg, compute_cfg)
    with distributed.session():
        rows = read_prepared(TRAIN_FILE)
        if control:
            rows = withhold_premise(rows)
        throughput = Throughput()
        trainer, layout = build_trainer(model_cfg, prompt_cfg, lora_cfg, train_cfg, rows, checkpoint_dir,
                                        [throughput], stage)
        fingerprint = run_fingerprint((model_cfg, prompt_cfg, lora_cfg, train_cfg), layout, control)
        trainer.add_callback(RunFingerprint(fingerprint))
        resume_from = resumable_checkpoint(fingerprint, checkpoint_dir)
        print(f"{stage}: {trainer.args.max_steps} steps of {layout.batch_size} pairs = {layout.processes} "
              f"process(es) x {layout.micro_batch_size} x {layout.accumulation} accumulated", flush=True)
        if distributed.is_main():
            cpu_hint(stage, trainer.args.max_steps * layout.batch_size)
        if resume_from:
            print(f"{stage}: resuming from {resume_from} (step {resume_from.rsplit('-', 1)[1]})", flush=True)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        train(trainer, resume_from, train_cfg, prompt_cfg)
        # On resume Trainer replaced the callback with one restored from the checkpoint.
        throughput = next(c for c in trainer.callback_handler.callbacks if isinstance(c, Throughput))
        memory = distributed.gather(peak_memory())
        release_data_parallel(trainer)
        if not all(torch.isfinite(p).all() for p in trainer.model.parameters() if p.requires_grad):
            raise PipelineError(f"{stage}: training diverged (the adapter holds NaN or inf); lower train.lr "
                                "or set model.compute_dtype: float32")
        if not distributed.is_main():
            return
        metrics = summary(trainer, throughput, layout, rows) | {"memory": memory[0], "version_drift": drift}
        metrics["resumed_from_step"] = int(resume_from.rsplit("-", 1)[1]) if resume_from else 0
        if len(memory) > 1:
            metrics["memory_per_process"] = {f"rank{r}": m for r, m in enumerate(memory)}
        try:
            with atomic_dir(adapter_dir) as staging:
                save_adapter(trainer.model, model_cfg, staging)
        except Exception as err:  # a full disk surfaces as OSError or as safetensors' own error
            raise PipelineError(f"{adapter_dir}: cannot write the adapter ({first_line(err)}); "
                                "nothing was replaced") from err
        headline = {key: metrics[key] for key in ("train_seconds", "tokens_per_s", "steps", "final_loss", "memory")}
        headline["params"] = {key: metrics["params"][key] for key in ("trainable", "total")}
        write_metrics(stage, headline, {k: v for k, v in metrics.items() if k not in headline} | {
            "params": metrics["params"]}, plots=lambda live: write_loss_curve(live, trainer.state.log_history))
        for finished in checkpoint_dir.glob("checkpoint-*"):  # the run is complete: nothing to resume
            shutil.rmtree(finished)
    print(f"{stage}: {metrics['steps']} steps in {metrics['train_seconds']:.1f} s, {metrics['tokens_per_s']:.0f} "
          f"tokens/s, loss of the last {trainer.args.logging_steps} steps {metrics['final_loss']:.4f}, trainable "
          f"{metrics['params']['trainable']:,} of {metrics['params']['total']:,} params")


if __name__ == "__main__":
    run_as_program(main)
