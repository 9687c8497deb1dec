"""Measuring a stage (clocks, peak memory) and writing its metrics (dvclive, one folder per stage)."""
import resource
import sys
import time
from pathlib import Path


METRICS_DIR = Path("metrics")


def synced_clock():
    """perf_counter after the GPU's queued work is done, so that spans time the work, not its launch."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def peak_memory():
    """Peak memory of this process: GPU allocated/reserved (if any) and CPU resident set, in GiB."""
    gib = 1024 ** 3
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    memory = {"cpu_peak_rss_gib": rss / gib * (1 if sys.platform == "darwin" else 1024)}
    import torch

    if torch.cuda.is_available():
        memory["gpu_peak_allocated_gib"] = torch.cuda.max_memory_allocated() / gib
        memory["gpu_peak_reserved_gib"] = torch.cuda.max_memory_reserved() / gib
    return memory


def open_live(stage):
    """A dvclive logger writing metrics/<stage>/metrics.json (and plots), leaving dvc.yaml alone."""
    from dvclive import Live

    return Live(str(METRICS_DIR / stage), dvcyaml=False, save_dvc_exp=False, report=None)


def write_metrics(stage, headline, details, plots=None):
    """metrics/<stage>/: metrics.json holds the headline numbers a person compares across runs (what
    `dvc metrics diff` and `dvc exp show` list); details.json the rest. `plots(live)` logs plot data."""
    import json

    with open_live(stage) as live:
        if plots:
            plots(live)
        live.summary = rounded(headline)  # only the headline, not every metric a plot logged
        (Path(live.dir) / "details.json").write_text(json.dumps(rounded(details), indent=2) + "\n")


def write_confusion_rows(live, gold, predicted):
    """The (gold, predicted) label of every pair as a small CSV beside the metrics, tracked by git, so
    that `dvc plots diff` draws confusion matrices of any two commits from a clone with no cache."""
    lines = ["actual,predicted", *(f"{g},{p}" for g, p in zip(gold, predicted))]
    path = Path(live.plots_dir) / "confusion.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def rounded(value, digits=6):
    """Metrics rounded for readable diffs; nested dicts kept (dvc metrics diff flattens them)."""
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, float):
        return round(value, digits)
    return value
