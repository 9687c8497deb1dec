"""dvc.yaml lists, for every stage, each library module the stage imports: no stale cached results."""
import functools
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@functools.cache
def library_modules(module):
    """The stages.lib modules `stages.<module>` imports, from a fresh interpreter (once per module)."""
    return subprocess.run(
        [sys.executable, "-c", f"import sys, stages.{module}; print(*sorted(n for n in sys.modules "
                               f"if n.startswith('stages.lib.')))"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()


@pytest.mark.parametrize("stage", STAGES)
def test_stage_deps_cover_every_library_module_it_imports(stage):
    # python -m stages.<module> [args]; an argument naming another stage module (stages.control
    # finetune) is the module it runs when on, imported only then
    words = STAGES[stage]["cmd"].split()
    modules = [words[2].removeprefix("stages.")] + [w for w in words[3:] if (ROOT / "stages" / f"{w}.py").is_file()]
    imported = {m for module in modules for m in library_modules(module)}
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["deps"]
    assert all(f"stages/{module}.py" in deps for module in modules)
    missing = sorted(m for m in imported if f"stages/lib/{m.rsplit('.', 1)[1]}.py" not in deps)
    assert not missing, f"dvc.yaml: stage {stage} imports {missing} but does not list them as deps"


def test_dvc_yaml_declares_the_paths_the_stages_use():
    from stages.lib import paths
    from stages.lib.metrics import METRICS_DIR
    from stages.lib.report import FIGURES

    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    outs = {stage: {o if isinstance(o, str) else next(iter(o)) for o in s["outs"]}
            for stage, s in spec["stages"].items()}
    deps = {stage: set(s["deps"]) for stage, s in spec["stages"].items()}
    assert str(paths.PREPARED_DIR) in outs["prepare_data"]
    assert str(paths.TRAIN_FILE) in deps["finetune"] and str(paths.ADAPTER_DIR) in outs["finetune"]
    for which in ("base", "adapted"):
        assert str(paths.EVAL_FILE) in deps[f"evaluate_{which}"]
        assert str(paths.PREDICTIONS_DIR / f"{which}.csv") in outs[f"evaluate_{which}"]
    assert str(paths.ADAPTER_DIR) in deps["evaluate_adapted"] and str(paths.REPORT_DIR) in outs["analyze"]
    for stage in spec["stages"]:
        assert str(METRICS_DIR / stage) in outs[stage]
        assert str(METRICS_DIR / stage / "metrics.json") in spec["metrics"]
    plotted = {p if isinstance(p, str) else next(iter(p)) for p in spec["plots"]}
    assert {str(paths.REPORT_DIR / figure) for figure in FIGURES.values()} <= plotted
