"""evaluate_base / evaluate_adapted: score every evaluation pair, write predictions and metrics.

    python -m stages.evaluate base       # the 4-bit base model, zero-shot
    python -m stages.evaluate adapted    # the same 4-bit base with the LoRA adapter of `finetune`

Each label is scored by the log-likelihood of its verbalizer after the prompt; the prediction is the
best-scoring label. Writes data/predictions/<which>.csv and metrics/evaluate_<which>/. With
`compute.processes` > 1 the batches are shared out under torchrun and gathered back in file order.
"""
import argparse
import math
import time

import torch

import pandas as pd

from stages.lib import distributed, params
from stages.lib.errors import PipelineError, cli
from stages.lib.paths import ADAPTER_DIR, EVAL_FILE, PREDICTIONS_DIR
from stages.lib.metrics import classification, open_live, out_of_memory, peak_memory, rounded
from stages.lib.model import load_quantized, load_tokenizer, source
from stages.lib.prompt import Encoder
from stages.lib.scoring import best_label, score_rows
from stages.lib.snli import LABELS, atomic_path, read_prepared


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
    model_cfg, prompt_cfg, eval_cfg = params.load("model"), params.load("prompt"), params.load("eval")
    compute_cfg = params.load("compute")
    if distributed.is_launcher():
        source(model_cfg)  # convert a GGUF once, before any workers start
    distributed.relaunch("stages.evaluate", [which], compute_cfg)
    distributed.init()
    rows = read_prepared(EVAL_FILE)
    tokenizer = load_tokenizer(model_cfg)
    model = load_quantized(model_cfg, adapter_dir=ADAPTER_DIR if which == "adapted" else None)
    encoder = Encoder(tokenizer, prompt_cfg)
    started = time.perf_counter()
    try:
        shard_scores = score_rows(model, encoder, rows, eval_cfg.batch_size, (distributed.rank(), distributed.world_size()))
    except torch.OutOfMemoryError as err:
        raise out_of_memory(f"evaluate_{which}", f"eval.batch_size ({eval_cfg.batch_size}) or prompt.max_length "
                            f"({prompt_cfg.max_length})") from err
    gathered = distributed.gather((shard_scores, peak_memory()))
    seconds = time.perf_counter() - started
    if not distributed.is_main():
        return
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
                "processes": len(gathered), "memory": gathered[0][1]}
    if len(gathered) > 1:
        metrics["memory_per_process"] = {f"rank{r}": memory for r, (_, memory) in enumerate(gathered)}
    with open_live(f"evaluate_{which}") as live:
        live.summary.update(rounded(metrics))
    low, high = metrics["accuracy_ci95"].values()
    print(f"{which}: accuracy {metrics['accuracy']:.4f} (95% CI {low:.4f}-{high:.4f}) on {len(rows)} pairs, "
          f"{metrics['examples_per_s']:.1f} examples/s")


if __name__ == "__main__":
    main()
