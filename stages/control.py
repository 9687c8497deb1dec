"""finetune_control / evaluate_control: the hypothesis-only control, when control.hypothesis_only is true.

Then these stages run `finetune --control` and `evaluate control`: the same fine-tune and scoring with
the premise withheld. While it is off (the default) each writes that it is off and what analyze reads
(an empty control.csv), in about a second: neither torch nor the model is loaded.

    python -m stages.control finetune    # models/adapter_control, metrics/finetune_control
    python -m stages.control evaluate    # data/predictions/control.csv, metrics/evaluate_control
"""
import argparse

from stages.lib import params
from stages.lib.errors import cli, run_as_program
from stages.lib.files import atomic_dir, atomic_path
from stages.lib.metrics import write_metrics
from stages.lib.paths import CONTROL_ADAPTER_DIR, PREDICTIONS_DIR
from stages.lib.predictions import empty_predictions

OFF = "control.hypothesis_only is false in params.yaml"


def write_finetune_off():
    with atomic_dir(CONTROL_ADAPTER_DIR) as staging:
        (staging / "OFF.md").write_text(f"{OFF}: no control was trained.\n")
    write_metrics("finetune_control", {"enabled": False}, {})


def write_evaluate_off():
    with atomic_path(PREDICTIONS_DIR / "control.csv") as tmp:
        tmp.write_text(empty_predictions("control"))
    write_metrics("evaluate_control", {"enabled": False}, {})


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("finetune", "evaluate"))
    step = parser.parse_args(argv).step
    if params.load("control").hypothesis_only:
        if step == "finetune":
            from stages import finetune

            return finetune.main(["--control"])
        from stages import evaluate

        return evaluate.main(["control"])
    (write_finetune_off if step == "finetune" else write_evaluate_off)()
    print(f"{step}_control: off ({OFF})")


if __name__ == "__main__":
    run_as_program(main)
