"""Fine-tuning speed at phi-2 shape: the seed recipe and the pipeline's path, same examples, one call.

    python -m bench.train --snli DIR --out DIR [--steps 12] [--warmup 3] [--profile 3]
    python -m bench.train ... --variant 'name={"batch_size": 128, "lora.dropout": 0}'   # an ad-hoc variant
    python -m bench.train ... --loss-curve     # every step's loss, and each variant's largest gap to the first's
    ... --variant 'bucketed, eager={"cuda_graphs": true, "replay": false}'   # graphs' padding, steps run eagerly
    torchrun --nproc-per-node 2 -m bench.train ...   # data-parallel, as `compute.processes: 2` runs it

Variants run one after another in one process; memory a run leaves reserved (a CUDA graph's pool)
can show in the next one's peak, so time memory-bound variants one per process (docs/benchmarks.md).

Every variant is the `finetune` stage's own Trainer (stages.lib.training.build_trainer) configured
through TrainParams (and lora.dropout): the seed recipe (batch 1 x accumulation 4, gradient
checkpointing, paged 8-bit AdamW, logits at every position, fp32 upcast, fp32 adapters, no TF32),
then one change at a time. LoRA r=32 on q/k/v/dense, NF4 + double quant, bf16 compute. Tokens are
non-padding; utilisation counts 4 x params FLOPs per token against the bf16 ceiling.
"""
import dataclasses
import gc
import json
import re
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
from transformers import Trainer

from bench.phi2 import (PEAK_BF16_FLOPS, arguments, gpu_name, model_label, model_tag, shared_model, snli_rows,
                        write_result)
from stages.lib.training import Throughput, build_trainer
from stages.lib import distributed, graphs, params
from stages.lib.measure import peak_memory
from stages.lib import runtime

LORA = params.load("lora", r=32, alpha=64, dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "dense"])
# No checkpoints or per-step logs; the base dequantized per matmul, as `auto` decides for phi-2 on a
# 24 GiB card, and eager steps (a variant sets "dequantize_base": "once" or "cuda_graphs": true).
BENCH_SETTINGS = dict(save_steps=10**9, logging_steps=10**9, dequantize_base="per_matmul", cuda_graphs=False)
SEED_RECIPE = dict(batch_size=4, micro_batch_size=1, gradient_checkpointing=True, optim="paged_adamw_8bit",
                   answer_logits_only=False, fp32_upcast=True, group_by_length=False, tf32=False,
                   adapter_dtype="float32")
# Each step changes one thing from the one before; the rest come from params.yaml's train section.
EARLY = dict(tf32=False, adapter_dtype="float32")  # settings the ladder reaches later
CKPT = dict(batch_size=256, gradient_checkpointing=True)
VARIANTS = [
    ("seed recipe", SEED_RECIPE),
    ("batch 64, no checkpointing, fused AdamW", dict(SEED_RECIPE, batch_size=64, micro_batch_size=None,
                                                     gradient_checkpointing=False, optim="adamw_torch_fused")),
    ("+ length-grouped batches", dict(EARLY, batch_size=64, answer_logits_only=False, fp32_upcast=True)),
    ("+ answer logits only", dict(EARLY, batch_size=64, fp32_upcast=True)),
    ("+ no fp32 upcast", dict(EARLY, batch_size=64)),
    ("batch 256 + checkpointing", dict(EARLY, **CKPT)),
    ("+ TF32 LoRA matmuls", dict(CKPT, adapter_dtype="float32")),
    ("+ bf16 adapters (the pipeline's settings)", CKPT),
    ("+ LoRA dropout 0", {**CKPT, "lora.dropout": 0.0}),
    ("batch 512 + checkpointing", {**CKPT, "batch_size": 512, "lora.dropout": 0.0}),
    ("batch 96, no checkpointing", {"batch_size": 96, "lora.dropout": 0.0}),
    ("batch 96, no checkpointing, compiled layers", {"batch_size": 96, "lora.dropout": 0.0, "compile": True}),
    ("batch 160, compiled, half the activations recomputed",
     {"batch_size": 160, "lora.dropout": 0.0, "compile": True, "activation_memory_budget": 0.5}),
    ("batch 176, compiled, 4 of 32 layers checkpointed",
     {"batch_size": 176, "lora.dropout": 0.0, "compile": True, "activation_memory_budget": 0.4,
      "gradient_checkpointing": True, "checkpoint_every_n_layers": 8}),
    # With the NF4 matmul in torch ops the partitioner can recompute it: most activations recomputed
    ("batch 176, compiled, 85 % of activations recomputed",
     {"batch_size": 176, "lora.dropout": 0.0, "compile": True, "activation_memory_budget": 0.15}),
    ("batch 192, compiled, 85 % of activations recomputed",
     {"batch_size": 192, "lora.dropout": 0.0, "compile": True, "activation_memory_budget": 0.15}),
    # The frozen base kept dequantized (2 bytes a weight more): no NF4 dequantization in any step
    ("batch 256 + checkpointing, base dequantized once", {**CKPT, "lora.dropout": 0.0, "dequantize_base": "once"}),
    ("batch 128, compiled, 85 % recomputed, base dequantized once",
     {"batch_size": 128, "lora.dropout": 0.0, "compile": True, "activation_memory_budget": 0.15,
      "dequantize_base": "once"}),
    ("batch 160, compiled, 85 % recomputed, base dequantized once",
     {"batch_size": 160, "lora.dropout": 0.0, "compile": True, "activation_memory_budget": 0.15,
      "dequantize_base": "once"}),
    # Each batch shape's compiled step recorded as a CUDA graph: no host time between kernels
    ("batch 192, compiled, 85 % recomputed, CUDA graphs",
     {"batch_size": 192, "lora.dropout": 0.0, "compile": True, "activation_memory_budget": 0.15, "cuda_graphs": True}),
    ("batch 128, compiled, 85 % recomputed, base dequantized once, CUDA graphs",
     {"batch_size": 128, "lora.dropout": 0.0, "compile": True, "activation_memory_budget": 0.15,
      "dequantize_base": "once", "cuda_graphs": True}),
    ("batch 96, compiled, half recomputed, base dequantized once, CUDA graphs",
     {"batch_size": 96, "lora.dropout": 0.0, "compile": True, "activation_memory_budget": 0.5,
      "dequantize_base": "once", "cuda_graphs": True}),
    ("batch 64, compiled, base dequantized once, CUDA graphs",
     {"batch_size": 64, "lora.dropout": 0.0, "compile": True, "dequantize_base": "once", "cuda_graphs": True}),
    ("batch 256 (micro 64), compiled, base dequantized once, CUDA graphs",
     {"batch_size": 256, "micro_batch_size": 64, "lora.dropout": 0.0, "compile": True, "dequantize_base": "once",
      "cuda_graphs": True}),
]


class Profile(Throughput):
    """torch.profiler over `steps` optimizer steps after the first `skip_steps`: where the time goes."""

    def __init__(self, skip_steps, steps):
        super().__init__(skip_steps, steps)
        self.report = None
        activities = [torch.profiler.ProfilerActivity.CPU]
        activities += [torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else []
        self.profiler = torch.profiler.profile(activities=activities)

    def on_step_begin(self, args, state, control, **kwargs):
        waiting = self.start is None
        super().on_step_begin(args, state, control, **kwargs)
        if waiting and self.start is not None:
            self.profiler.start()

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        if self.done and self.report is None:
            self.profiler.stop()
            events = self.profiler.key_averages()
            kernel_us = sum(e.self_device_time_total for e in events if e.self_device_time_total > 0
                            and e.device_type == torch.autograd.DeviceType.CUDA)
            self.report = {"wall_ms_per_step": 1e3 * self.seconds / self.timed_steps,
                           "kernel_ms_per_step": kernel_us / 1e3 / self.timed_steps,
                           "table": events.table(sort_by="self_device_time_total", row_limit=30,
                                                 max_name_column_width=70)
                           + events.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=70)}


def run_variant(model_cfg, lora, rows, changes, steps, warmup, profile_steps=0, loss_curve=False):
    if changes.get("replay") is False:  # the graphs' length buckets, each step run eagerly: their reference
        with mock.patch.object(graphs.GraphedTrainer, "training_step", Trainer.training_step):
            return run_variant(model_cfg, lora, rows, {k: v for k, v in changes.items() if k != "replay"},
                               steps, warmup, profile_steps, loss_curve)
    lora = dataclasses.replace(lora, **{k[5:]: v for k, v in changes.items() if k.startswith("lora.")})
    changes = BENCH_SETTINGS | ({"logging_steps": 1} if loss_curve else {}) | {
        k: v for k, v in changes.items() if not k.startswith("lora.")}
    train_cfg = dataclasses.replace(params.load("train"), **changes, max_steps=steps + warmup + profile_steps)
    torch._dynamo.reset()  # each variant compiles afresh (wall_seconds includes it), within the recompile limit
    # The timed steps end before the profiled ones, whose profiler overhead they must not count.
    throughput = Throughput(skip_steps=warmup, steps=steps)
    profile = Profile(skip_steps=warmup + steps, steps=profile_steps) if profile_steps else None
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        trainer, layout = build_trainer(model_cfg, params.load("prompt"), lora, train_cfg, rows, scratch,
                                        [throughput, profile] if profile else [throughput])
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        trainable, total = trainer.model.get_nb_trainable_parameters()
        try:
            trainer.train()
            result = {"tokens_per_s": throughput.tokens / throughput.seconds, "seconds": throughput.seconds,
                      "tokens": throughput.tokens, "steps": steps,
                      "examples_per_s": steps * train_cfg.batch_size / throughput.seconds, **layout.as_metrics(),
                      "base_params": total - trainable, "wall_seconds": time.perf_counter() - started,
                      "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
                      # None: a run without graphs; False: their recording failed and the steps ran eagerly
                      "graphs_replayed": bool(trainer.graphs) if getattr(trainer, "graphs", None) is not None else None}
        except torch.OutOfMemoryError:
            result = {"out_of_memory": True}
        except RuntimeError as err:  # a variant that cannot run here
            result = {"error": graphs.first_error(err)}
        result |= {"memory": peak_memory(), "params": dataclasses.asdict(train_cfg), "lora": dataclasses.asdict(lora)}
        if profile and profile.report:
            result["profile"] = profile.report
    del trainer
    gc.collect()
    torch.cuda.empty_cache()
    return result


def main():
    parser = arguments(__doc__)
    parser.add_argument("--examples", type=int, default=20000, help="an epoch of this many pairs is reported")
    parser.add_argument("--steps", type=int, default=12, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=3)
    # Not --only: inductor reads the word after --only in sys.argv into the code it generates.
    parser.add_argument("--select", nargs="*", help="variant names to run (default: all)")
    parser.add_argument("--variant", action="append", default=[], metavar='NAME={"key": value}',
                        help="an extra variant: train.* keys, and lora.* keys prefixed 'lora.'")
    parser.add_argument("--loss-curve", action="store_true",
                        help="log every step's loss (a sync a step: slower) and compare each variant's to the first's")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="profile this many steps after the timed ones; tables in OUT/profile_*.txt")
    args = parser.parse_args()
    runtime.configure()
    model_cfg = shared_model(args)
    rows = snli_rows(args.snli, "train", args.examples)
    lora = LORA if args.model is None else params.load("lora")  # another model: the pipeline's own LoRA
    extra = [(name, json.loads(changes)) for name, changes in (v.split("=", 1) for v in args.variant)]
    results = {}
    chosen = [(name, changes) for name, changes in VARIANTS if args.select is None or name in args.select]
    for name, changes in chosen + extra:
        results[name] = run_variant(model_cfg, lora, rows, changes, args.steps, args.warmup, args.profile,
                                    args.loss_curve)
        profile = results[name].pop("profile", None)
        if profile and distributed.is_main():
            slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
            results[name]["profile_ms_per_step"] = {k: v for k, v in profile.items() if k != "table"}
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / f"profile_{slug}.txt").write_text(
                f"{name}: {profile['wall_ms_per_step']:.1f} ms/step wall, {profile['kernel_ms_per_step']:.1f} ms/step "
                f"in GPU kernels\n\n{profile['table']}\n")
        results[name]["memory_per_process"] = distributed.gather(results[name]["memory"])
        if distributed.is_main():
            print(name, {k: v for k, v in results[name].items() if k != "params"}, flush=True)
    if not distributed.is_main():
        return
    seed = results.get("seed recipe", {}).get("tokens_per_s")
    reference = next(iter(results.values())).get("losses")
    table = [["variant", "tokens/s", "x seed", "s/epoch", "GiB alloc", "GiB reserved", "util %"]
             + (["largest loss gap to the first"] if args.loss_curve else [])]
    for name, r in results.items():
        if r.get("out_of_memory") or r.get("error"):
            table.append([name, "OOM" if r.get("out_of_memory") else "error", "", "", "", "", ""])
            continue
        if args.loss_curve and reference:  # relative, step by step over the steps both ran
            r["largest_relative_loss_gap"] = max(abs(a - b) / abs(b) for a, b in zip(r["losses"], reference))
        r["seconds_per_epoch"] = args.examples / r["examples_per_s"]
        r["utilisation"] = r["tokens_per_s"] * 4 * r["base_params"] / (PEAK_BF16_FLOPS * distributed.world_size())
        r["x_seed"] = r["tokens_per_s"] / seed if seed else None
        mem = r["memory"]
        if r["graphs_replayed"] is False:
            name += " (graphs not recorded: eager)"
        table.append([name, f"{r['tokens_per_s']:,.0f}", f"{r['x_seed']:.1f}" if seed else "",
                      f"{r['seconds_per_epoch']:,.0f}", f"{mem.get('gpu_peak_allocated_gib', 0):.1f}",
                      f"{mem.get('gpu_peak_reserved_gib', 0):.1f}", f"{100 * r['utilisation']:.1f}"]
                     + ([f"{r.get('largest_relative_loss_gap', 0):.2e}"] if args.loss_curve else []))
    result = {"device": gpu_name(), "processes": distributed.world_size(), "model": model_label(args),
              "epoch_examples": args.examples, "timed_steps": args.steps,
              "warmup_steps": args.warmup, "variants": results}
    write_result(args.out, f"train_{model_tag(args)}_{distributed.world_size()}proc", result, table)


if __name__ == "__main__":
    with distributed.session():
        main()
