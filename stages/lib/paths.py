"""Where the stages read and write (the same paths dvc.yaml declares)."""
from pathlib import Path

PREPARED_DIR = Path("data/prepared")
TRAIN_FILE = PREPARED_DIR / "train.jsonl"
EVAL_FILE = PREPARED_DIR / "eval.jsonl"
PREDICTIONS_DIR = Path("data/predictions")
ADAPTER_DIR = Path("models/adapter")
CHECKPOINT_DIR = Path("models/checkpoints")
CONTROL_ADAPTER_DIR = Path("models/adapter_control")  # the hypothesis-only control's
CONTROL_CHECKPOINT_DIR = Path("models/checkpoints_control")
REPORT_DIR = Path("reports")  # report.md and figures/
