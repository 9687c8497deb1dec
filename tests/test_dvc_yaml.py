"""dvc.yaml lists, for every stage, each library module the stage imports: no stale cached results."""
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT

STAGE_MODULES = {"prepare_data": "prepare_data", "evaluate_base": "evaluate", "evaluate_adapted": "evaluate",
                 "finetune": "finetune", "analyze": "analyze"}


@pytest.mark.parametrize("stage", STAGE_MODULES)
def test_stage_deps_cover_every_library_module_it_imports(stage):
    module = STAGE_MODULES[stage]
    imported = subprocess.run(
        [sys.executable, "-c", f"import sys, stages.{module}; print(*sorted(n for n in sys.modules "
                               f"if n.startswith('stages.lib.')))"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["deps"]
    assert f"stages/{module}.py" in deps
    missing = [m for m in imported if f"stages/lib/{m.rsplit('.', 1)[1]}.py" not in deps]
    assert not missing, f"dvc.yaml: stage {stage} imports {missing} but does not list them as deps"
