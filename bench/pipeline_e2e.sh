#!/usr/bin/env bash
# End-to-end benchmark: one `dvc repro` of the committed params.yaml, as a user runs it, timed.
# Each log line is stamped with the seconds since the start; a stage runs from its "Running stage"
# line to the next one (the last one to the end of dvc repro); the total is the whole dvc repro.
# Writes OUT_DIR/pipeline_e2e.json (seconds per stage, accuracy before/after with CIs) and
# OUT_DIR/outputs.tar.gz.part-* (dvc.lock, metrics/, predictions, report, adapter) to bring back.
# Usage, from the project root: bash bench/pipeline_e2e.sh SNLI_DIR OUT_DIR
set -euo pipefail
snli=$1 out=$2
mkdir -p "$out"
if ! git rev-parse -q --verify HEAD >/dev/null 2>&1; then  # a copied tree: dvclive wants a commit
  git init -q && git add -A && git -c user.name=bench -c user.email=bench@localhost commit -qm snapshot
fi
# Bytecode for read-only site-packages (the device's image ships none): without a cache every stage
# recompiles ~3,000 modules, about 11 s, which an installed environment never pays.
export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-$HOME/.cache/nli-qlora/pycache}
python -m stages.fetch_data --from "$snli"
dvc repro 2>&1 | grep --line-buffered -vE "Loading weights|Converting and de-quantizing" \
  | python -u -c 'import sys, time; t = time.perf_counter(); [print(f"{time.perf_counter() - t:8.2f} {line}", end="") for line in sys.stdin]; print(f"{time.perf_counter() - t:8.2f} (dvc repro done)")' \
  | tee "$out/log.txt"
python - "$out" <<'PY'
import json, re, shutil, subprocess, sys
out = sys.argv[1]
lines = [(float(line[:8]), line[9:]) for line in open(f"{out}/log.txt") if line[:8].strip()]
starts = [(m.group(1), t) for t, text in lines for m in [re.match(r"Running stage '(\w+)'", text)] if m]
ends = [t for _, t in starts[1:]] + [lines[-1][0]]
seconds = {stage: round(end - start, 1) for (stage, start), end in zip(starts, ends)}
metric = lambda stage: json.load(open(f"metrics/{stage}/metrics.json"))
base, adapted, tune = metric("evaluate_base"), metric("evaluate_adapted"), metric("finetune")
gpu = shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"],
                                                   capture_output=True, text=True).stdout.strip()
result = {"device": gpu or "cpu", "stage_seconds": seconds, "total_seconds": round(lines[-1][0], 1),
          "n_eval": base["n"], "n_train": tune["examples"],
          "accuracy": {"base": base["accuracy"], "base_ci95": base["accuracy_ci95"],
                       "adapted": adapted["accuracy"], "adapted_ci95": adapted["accuracy_ci95"]},
          "finetune": {k: tune[k] for k in ("train_seconds", "tokens_per_s", "steps", "final_loss", "memory", "params")},
          "outcomes": metric("analyze")["counts"]}
json.dump(result, open(f"{out}/pipeline_e2e.json", "w"), indent=2)
print("| stage | seconds |\n|---|---|")
for stage, s in seconds.items():
    print(f"| {stage} | {s} |")
print(f"| total | {result['total_seconds']} |")
print(f"accuracy base {base['accuracy']:.4f} -> adapted {adapted['accuracy']:.4f} on {base['n']} pairs")
PY
tar czf - dvc.lock metrics data/predictions reports models/adapter models/checkpoints | split -b 15m - "$out/outputs.tar.gz.part-"
