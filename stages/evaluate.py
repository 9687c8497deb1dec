"""evaluate_base / evaluate_adapted: score every evaluation pair, write predictions and metrics.

    python -m stages.evaluate base       # the 4-bit base model, zero-shot
    python -m stages.evaluate adapted    # the same 4-bit base with the LoRA adapter of `finetune`

Each label is scored by the log-likelihood of its verbalizer after the prompt; the prediction is the
best-scoring label. Writes data/predictions/<which>.csv and metrics/evaluate_<which>/. With
`compute.processes` > 1 the batches are shared out among worker processes and gathered back in file order.
`eval.batch_size` is halved until the longest prompts fit the GPU; the size used is in the metrics.
"""
import argparse
import json
import math
import time

import torch

import pandas as pd

from stages.lib import distributed, params, runtime
from stages.lib.environment import version_drift
from stages.lib.errors import PipelineError, cli, out_of_memory, run_as_program
from stages.lib.files import atomic_path
from stages.lib.measure import peak_memory
from stages.lib.metrics import write_confusion_rows, write_metrics
from stages.lib.model import load_quantized, load_tokenizer
from stages.lib.model_source import base_model_reference, source
from stages.lib.paths import ADAPTER_DIR, EVAL_FILE, PREDICTIONS_DIR
from stages.lib.progress import Progress, cpu_hint
from stages.lib.prompt import Encoder
from stages.lib.scoring import PackedScorer, best_label, fitting_batch_size, score_rows
from stages.lib.snli import LABELS, read_prepared
from stages.lib.stats import classification


def predictions_frame(rows, scores, predicted):
    frame = pd.DataFrame(rows)
    frame["gold_label"] = [LABELS[g] for g in frame["label"]]
    frame["predicted_label"] = [LABELS[p] for p in predicted]
    for k, label in enumerate(LABELS):
        frame[f"score_{label}"] = [s[k] for s in scores]
    return frame.drop(columns="label")


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=("base", "adapted"))
    which = parser.parse_args(argv).which
    runtime.configure()
    model_cfg, prompt_cfg, eval_cfg = params.load("model"), params.load("prompt"), params.load("eval")
    compute_cfg = params.load("compute")
    drift = version_drift(f"evaluate_{which}", announce=distributed.is_launcher())
    if distributed.is_launcher():
        source(model_cfg)  # convert a GGUF once, before any workers start
        # null: one process; scoring takes seconds, a second process and model load cost more
        distributed.relaunch("stages.evaluate", [which], distributed.process_count(compute_cfg, lambda: False))
    with distributed.session():
        scored = score(which, model_cfg, prompt_cfg, eval_cfg)
    if scored is not None:
        write_outputs(which, *scored, drift)


def score(which, model_cfg, prompt_cfg, eval_cfg):
    """(rows, encoder, batch size, seconds, per-process (scores, memory)) on the main process, else None."""
    rows = read_prepared(EVAL_FILE)
    if not rows:
        raise PipelineError(f"{EVAL_FILE}: no pairs to evaluate")
    adapter = ADAPTER_DIR if which == "adapted" else None
    if adapter is not None:
        check_adapter_base(adapter, model_cfg)
    encoder = Encoder(load_tokenizer(model_cfg), prompt_cfg)
    scorer = PackedScorer(load_quantized(model_cfg, adapter_dir=adapter), encoder)
    prompts = encoder.prompt_ids(rows)
    batch_size = distributed.agree_on_min(fitting_batch_size(scorer, prompts, eval_cfg.batch_size))
    if batch_size == 0:
        raise out_of_memory(f"evaluate_{which}", f"prompt.max_length ({prompt_cfg.max_length})")
    started = time.perf_counter()
    print(f"evaluate_{which}: scoring {len(rows):,} pairs, {batch_size} per forward pass", flush=True)
    if distributed.is_main():
        cpu_hint(f"evaluate_{which}", len(rows))
    progress = Progress(f"evaluate_{which}", len(rows)) if distributed.is_main() else None
    try:
        shard_scores = score_rows(scorer, prompts, batch_size, (distributed.rank(), distributed.world_size()),
                                  progress and (lambda n: progress.advance(n * distributed.world_size())))
    except torch.OutOfMemoryError as err:
        raise out_of_memory(f"evaluate_{which}", f"eval.batch_size ({batch_size}) or prompt.max_length "
                            f"({prompt_cfg.max_length})") from err
    gathered = distributed.gather((shard_scores, peak_memory()))
    seconds = time.perf_counter() - started
    if not distributed.is_main():
        return None
    return rows, encoder, batch_size, seconds, gathered


def check_adapter_base(adapter, model_cfg):
    """An adapter scores only on the base it was trained on."""
    try:
        trained_on = json.loads((adapter / "base_model.json").read_text())
    except (OSError, ValueError) as err:
        raise PipelineError(f"{adapter}/base_model.json: missing or unreadable; re-run finetune") from err
    if trained_on != base_model_reference(model_cfg):
        raise PipelineError(f"{adapter}: trained on {trained_on}, but params.yaml model is "
                            f"{base_model_reference(model_cfg)}; re-run finetune")


def write_outputs(which, rows, encoder, batch_size, seconds, gathered, drift):
    by_position = {i: s for shard, _ in gathered for i, s in shard.items()}
    assert sorted(by_position) == list(range(len(rows))), "every pair scored exactly once"
    scores = [by_position[i] for i in range(len(rows))]
    broken = next((row["idx"] for row, s in zip(rows, scores) if not all(map(math.isfinite, s))), None)
    if broken is not None:
        raise PipelineError(f"{EVAL_FILE}: pair idx {broken} scored NaN or inf: the {which} model's weights are broken")
    predicted = [best_label(s) for s in scores]
    frame = predictions_frame(rows, scores, predicted)
    with atomic_path(PREDICTIONS_DIR / f"{which}.csv") as tmp:
        frame.to_csv(tmp, index=False)
    metrics = classification([row["label"] for row in rows], predicted)
    metrics |= {"seconds": seconds, "examples_per_s": len(rows) / seconds, "truncated_prompts": encoder.truncated,
                "processes": len(gathered), "batch_size": batch_size, "memory": gathered[0][1],
                "version_drift": drift}
    if len(gathered) > 1:
        metrics["memory_per_process"] = {f"rank{r}": memory for r, (_, memory) in enumerate(gathered)}
    headline = {key: metrics[key] for key in ("n", "accuracy", "accuracy_ci95", "macro_f1", "examples_per_s", "memory")}
    write_metrics(f"evaluate_{which}", headline, {k: v for k, v in metrics.items() if k not in headline},
                  plots=lambda live: write_confusion_rows(live, frame["gold_label"], frame["predicted_label"]))
    low, high = metrics["accuracy_ci95"].values()
    print(f"{which}: accuracy {metrics['accuracy']:.4f} (95% CI {low:.4f}-{high:.4f}) on {len(rows)} pairs, "
          f"{metrics['examples_per_s']:.1f} examples/s")


if __name__ == "__main__":
    run_as_program(main)
