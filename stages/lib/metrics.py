"""Writing a stage's metrics: metrics/<stage>/, headline and details apart, through dvclive where a stage logs plots."""
from pathlib import Path

METRICS_DIR = Path("metrics")


def open_live(stage):
    """A dvclive logger writing metrics/<stage>/metrics.json (and plots), leaving dvc.yaml alone."""
    from dvclive import Live

    return Live(str(METRICS_DIR / stage), dvcyaml=False, save_dvc_exp=False, report=None)


def write_metrics(stage, headline, details, plots=None):
    """metrics/<stage>/: metrics.json holds the headline numbers a person compares across runs (what
    `dvc metrics diff` and `dvc exp show` list); details.json the rest. `plots(live)` logs plot data.

    Stages with plots write through dvclive. A stage without writes metrics.json as dvclive would
    (4-space indent): importing dvclive, and pandas with it, would take longer than the rest of a
    small stage, such as the control's while it is off.
    """
    import json

    directory = METRICS_DIR / stage
    if plots:
        with open_live(stage) as live:
            plots(live)
            live.summary = rounded(headline)  # only the headline, not every metric a plot logged
    else:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "metrics.json").write_text(json.dumps(rounded(headline), indent=4) + "\n")
    (directory / "details.json").write_text(json.dumps(rounded(details), indent=2) + "\n")


def read_metrics(stage, directory=METRICS_DIR):
    """metrics/<stage>/'s headline and details in one dict (None if either is missing). A key in both
    (the base references' `calibrated`, finetune's `params`) merges its two halves."""
    import json

    files = [Path(directory) / stage / name for name in ("metrics.json", "details.json")]
    if not all(path.is_file() for path in files):
        return None
    headline, details = (json.loads(path.read_text()) for path in files)
    both = {key: headline[key] | details[key] for key in headline.keys() & details.keys()}
    return headline | details | both


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
