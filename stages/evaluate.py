"""evaluate_base / evaluate_adapted / evaluate_control: score every evaluation pair, write predictions
and metrics.

    python -m stages.evaluate base       # the 4-bit base model, zero-shot, calibrated, and k-shot
    python -m stages.evaluate adapted    # the same 4-bit base with the LoRA adapter of `finetune`
    python -m stages.evaluate control    # the hypothesis-only control: its adapter, the premise withheld
                                         # (run by `python -m stages.control evaluate` when it is on)

Each label is scored by the log-likelihood of its verbalizer after the prompt; the prediction is the
best-scoring label. Writes data/predictions/<which>.csv and metrics/evaluate_<which>/. The base's file
also holds its calibrated and k-shot scores and predictions (baselines.py), each with its own metrics.
With `compute.processes` > 1 the batches are shared out among worker processes and gathered back in
file order. `eval.batch_size` is halved until the longest prompts fit the GPU; the size used is in the
metrics.
"""
import argparse
import json
import math
import time

import torch

from stages.lib import distributed, params, runtime
from stages.lib.baselines import calibrate, kshot_encoder, label_prior
from stages.lib.environment import version_drift
from stages.lib.errors import PipelineError, cli, out_of_memory, run_as_program
from stages.lib.files import atomic_path
from stages.lib.measure import peak_memory
from stages.lib.metrics import write_confusion_rows, write_metrics
from stages.lib.model import load_quantized, load_tokenizer, relaunch_where_it_pays
from stages.lib.model_source import base_model_reference
from stages.lib.paths import ADAPTER_DIR, CONTROL_ADAPTER_DIR, EVAL_FILE, PREDICTIONS_DIR, TRAIN_FILE
from stages.lib.predictions import predictions_frame
from stages.lib.progress import Progress, cpu_hint
from stages.lib.prompt import Encoder, withhold_premise
from stages.lib.scoring import PackedScorer, best_label, fitting_batch_size, score_rows
from stages.lib.snli import LABELS, read_prepared
from stages.lib.stats import classification

ADAPTERS = {"adapted": ADAPTER_DIR, "control": CONTROL_ADAPTER_DIR}
HEADLINE = ("accuracy", "accuracy_ci95", "macro_f1")  # of each scoring in metrics.json


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=("base", "adapted", "control"))
    which = parser.parse_args(argv).which
    runtime.configure()
    model_cfg, prompt_cfg, eval_cfg = params.load("model"), params.load("prompt"), params.load("eval")
    compute_cfg = params.load("compute")
    baselines_cfg = params.load("baselines") if which == "base" else None
    drift = version_drift(f"evaluate_{which}", announce=distributed.is_launcher())
    relaunch_where_it_pays("stages.evaluate", [which], model_cfg, compute_cfg)
    with distributed.session():
        scored = score(which, model_cfg, prompt_cfg, eval_cfg, baselines_cfg)
    if scored is not None:
        write_outputs(which, *scored, drift)


def score(which, model_cfg, prompt_cfg, eval_cfg, baselines_cfg):
    """On the main process (None elsewhere): rows, {scoring: (encoder, batch size, seconds)}, the
    content-free label prior (base only), the k-shot pairs shown, and per process (scores by
    scoring, memory)."""
    rows = read_prepared(EVAL_FILE)
    if not rows:
        raise PipelineError(f"{EVAL_FILE}: no pairs to evaluate")
    adapter = ADAPTERS.get(which)
    if adapter is not None:
        check_adapter_base(adapter, model_cfg)
    tokenizer = load_tokenizer(model_cfg)
    encoder = Encoder(tokenizer, prompt_cfg)
    scorer = PackedScorer(load_quantized(model_cfg, adapter_dir=adapter), encoder)
    encoders, prior, shown = {which: encoder}, None, []
    if baselines_cfg is not None:
        prior = label_prior(scorer, encoder, baselines_cfg.content_free)
        if baselines_cfg.shots:
            encoders["kshot"], shown = kshot_encoder(tokenizer, prompt_cfg, read_prepared(TRAIN_FILE), baselines_cfg,
                                                     TRAIN_FILE)
    scored_rows = withhold_premise(rows) if which == "control" else rows
    shard_scores, runs = {}, {}
    for name, each in encoders.items():
        shard_scores[name], runs[name] = score_all(f"evaluate_{which}", name, scorer, each,
                                                   each.prompt_ids(scored_rows), eval_cfg, prompt_cfg)
    gathered = distributed.gather((shard_scores, peak_memory()))
    if not distributed.is_main():
        return None
    return rows, runs, prior, shown, gathered


def score_all(stage, name, scorer, encoder, prompts, eval_cfg, prompt_cfg):
    """(this process's {row position: label scores}, (encoder, batch size, seconds)) for one scoring."""
    batch_size = distributed.agree_on_min(fitting_batch_size(scorer, prompts, eval_cfg.batch_size))
    if batch_size == 0:
        raise out_of_memory(stage, f"prompt.max_length ({prompt_cfg.max_length})")
    print(f"{stage}: scoring {len(prompts):,} pairs ({name}), {batch_size} per forward pass", flush=True)
    if distributed.is_main():
        cpu_hint(stage, len(prompts))
    progress = Progress(f"{stage} ({name})", len(prompts)) if distributed.is_main() else None
    started = time.perf_counter()
    try:
        scores = score_rows(scorer, prompts, batch_size, (distributed.rank(), distributed.world_size()),
                            progress and (lambda n: progress.advance(n * distributed.world_size())))
    except torch.OutOfMemoryError as err:
        raise out_of_memory(stage, f"eval.batch_size ({batch_size}) or prompt.max_length "
                            f"({prompt_cfg.max_length})") from err
    return scores, (encoder, batch_size, time.perf_counter() - started)


def check_adapter_base(adapter, model_cfg):
    """An adapter scores only on the base it was trained on."""
    try:
        trained_on = json.loads((adapter / "base_model.json").read_text())
    except (OSError, ValueError) as err:
        raise PipelineError(f"{adapter}/base_model.json: missing or unreadable; re-run finetune") from err
    if trained_on != base_model_reference(model_cfg):
        raise PipelineError(f"{adapter}: trained on {trained_on}, but params.yaml model is "
                            f"{base_model_reference(model_cfg)}; re-run finetune")


def in_file_order(gathered, name, rows, which):
    """One scoring's label scores in file order, from every process's share; NaN or inf stops the stage."""
    by_position = {i: s for shards, _ in gathered for i, s in shards[name].items()}
    assert sorted(by_position) == list(range(len(rows))), "every pair scored exactly once"
    scores = [by_position[i] for i in range(len(rows))]
    broken = next((row["idx"] for row, s in zip(rows, scores) if not all(map(math.isfinite, s))), None)
    if broken is not None:
        raise PipelineError(f"{EVAL_FILE}: pair idx {broken} scored NaN or inf: the {which} model's weights are broken")
    return scores


def write_outputs(which, rows, runs, prior, shown, gathered, drift):
    gold = [row["label"] for row in rows]
    scorings = []  # (name, scores, predictions), the plain one first
    for name in runs:
        scores = in_file_order(gathered, name, rows, which)
        scorings.append((name, scores, [best_label(s) for s in scores]))
        if name == which and prior is not None:
            calibrated = calibrate(scores, prior)
            scorings.append(("calibrated", calibrated, [best_label(s) for s in calibrated]))
    frame = predictions_frame(rows, scorings)
    with atomic_path(PREDICTIONS_DIR / f"{which}.csv") as tmp:
        frame.to_csv(tmp, index=False)
    encoder, batch_size, seconds = runs[which]
    metrics = classification(gold, scorings[0][2])
    metrics |= {"seconds": seconds, "examples_per_s": len(rows) / seconds, "truncated_prompts": encoder.truncated,
                "processes": len(gathered), "batch_size": batch_size, "memory": gathered[0][1],
                "version_drift": drift}
    headline = {key: metrics[key] for key in (*HEADLINE, "n", "examples_per_s", "memory")}
    for name, _, predicted in scorings[1:]:
        details = classification(gold, predicted)
        headline[name] = {key: details[key] for key in HEADLINE}
        metrics[name] = {key: value for key, value in details.items() if key not in HEADLINE}
        if name in runs:  # a scoring pass of its own (k-shot), not derived from another's scores
            run_encoder, run_batch_size, run_seconds = runs[name]
            metrics[name] |= {"seconds": run_seconds, "batch_size": run_batch_size, "shown_idx": shown,
                              "truncated_prompts": run_encoder.truncated}
    if prior is not None:
        metrics["calibrated"]["content_free_prior"] = dict(zip(LABELS, prior))
    if len(gathered) > 1:
        metrics["memory_per_process"] = {f"rank{r}": memory for r, (_, memory) in enumerate(gathered)}
    references = [name for name, _, _ in scorings[1:]]  # headline numbers in metrics.json, the rest in details
    write_metrics(f"evaluate_{which}", headline,
                  {k: v for k, v in metrics.items() if k not in headline or k in references},
                  plots=lambda live: write_confusion_rows(live, frame["gold_label"], frame["predicted_label"]))
    for name, values in [(which, metrics), *((name, headline[name]) for name, _, _ in scorings[1:])]:
        low, high = values["accuracy_ci95"].values()
        print(f"evaluate_{which} ({name}): accuracy {values['accuracy']:.4f} (95% CI {low:.4f}-{high:.4f}) "
              f"on {len(rows)} pairs")
    print(f"evaluate_{which}: {metrics['examples_per_s']:.1f} examples/s")


if __name__ == "__main__":
    run_as_program(main)
