#!/usr/bin/env bash
# End-to-end benchmark: `dvc repro` of the committed params.yaml, each stage timed.
# Writes OUT_DIR/pipeline_e2e.json (seconds per stage, accuracy before/after with CIs) and
# OUT_DIR/outputs.tar.gz.part-* (dvc.lock, metrics/, predictions, report, adapter) to bring back.
# With WITH_CONTROL=1 it then runs the hypothesis-only control as an experiment
# (dvc exp run -S control.hypothesis_only=true) and writes OUT_DIR/control/ (its report and metrics).
# Usage, from the project root: [WITH_CONTROL=1] bash bench/pipeline_e2e.sh SNLI_DIR OUT_DIR
set -euo pipefail
snli=$1 out=$2
mkdir -p "$out"
if ! git rev-parse -q --verify HEAD >/dev/null 2>&1; then  # a copied tree: dvclive wants a commit
  git init -q && git add -A && git -c user.name=bench -c user.email=bench@localhost commit -qm snapshot
fi
python -m stages.fetch_data --from "$snli"
# One `dvc repro`, as a user runs it; each line is stamped (ns) as it arrives, and a stage lasts from
# its "Running stage" line to the next one (or the end), dvc's own work between stages included.
start=$(date +%s%N)
dvc repro 2>&1 | grep --line-buffered -vE "Loading weights|Converting and de-quantizing" \
  | while IFS= read -r line; do printf '%s\t%s\n' "$(date +%s%N)" "$line"; printf '%s\n' "$line" >&2; done \
  > "$out/log_stamped.tsv"
printf '%s\tend\n' "$(date +%s%N)" >> "$out/log_stamped.tsv"
cut -f2- "$out/log_stamped.tsv" > "$out/log.txt"
awk -F'\t' -v start="$start" '  # before the first stage: dvc starting and checking what changed
  match($2, /^Running stage .([a-z_]+).:/) { print (stage ? stage : "dvc_start") "\t" int(($1 - (stage ? last : start)) / 1e6)
                                             stage = substr($2, RSTART + 15, RLENGTH - 17); last = $1 }
  $2 == "end" && stage { print stage "\t" int(($1 - last) / 1e6) }' "$out/log_stamped.tsv" > "$out/stage_seconds.tsv"  # ms
# the outputs first: a failing summary below must not lose them
tar czf - dvc.lock metrics data/predictions reports models/adapter models/adapter_control | split -b 15m - "$out/outputs.tar.gz.part-"
if ! python - "$out" <<'PY'
import json, shutil, subprocess, sys
out = sys.argv[1]
seconds = {s: round(int(ms) / 1000, 1) for s, ms in (line.split("\t") for line in open(f"{out}/stage_seconds.tsv"))}
from stages.lib.metrics import read_metrics as metric
base, adapted, tune = metric("evaluate_base"), metric("evaluate_adapted"), metric("finetune")
gpu = shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"],
                                                   capture_output=True, text=True).stdout.strip()
result = {"device": gpu or "cpu", "stage_seconds": seconds, "total_seconds": round(sum(seconds.values()), 1),
          "n_eval": base["n"], "n_train": tune["examples"],
          "accuracy": {"base": base["accuracy"], "base_ci95": base["accuracy_ci95"],
                       "base_calibrated": base["calibrated"]["accuracy"], "base_calibrated_ci95":
                       base["calibrated"]["accuracy_ci95"], "base_kshot": base["kshot"]["accuracy"],
                       "base_kshot_ci95": base["kshot"]["accuracy_ci95"],
                       "adapted": adapted["accuracy"], "adapted_ci95": adapted["accuracy_ci95"]},
          "finetune": {k: tune[k] for k in ("train_seconds", "tokens_per_s", "steps", "final_loss", "memory", "params",
                                             "processes", "micro_batch_size", "accumulation_steps")},
          "memory": {stage: metric(stage)["memory"] for stage in ("evaluate_base", "finetune", "evaluate_adapted")},
          "outcomes": metric("analyze")["counts"]}
json.dump(result, open(f"{out}/pipeline_e2e.json", "w"), indent=2)
print("| stage | seconds |\n|---|---|")
for stage, s in seconds.items():
    print(f"| {stage} | {s} |")
print(f"| total | {result['total_seconds']} |")
print(f"accuracy base {base['accuracy']:.4f} -> adapted {adapted['accuracy']:.4f} on {base['n']} pairs")
PY
then
  echo "the summary failed; the outputs are packed in $out"
fi
if [ "${WITH_CONTROL:-}" = 1 ]; then
  start=$(date +%s%N)
  dvc exp run -S control.hypothesis_only=true 2>&1 | tee -a "$out/log_control.txt"
  mkdir -p "$out/control"
  printf '%s\n' "$(( ($(date +%s%N) - start) / 1000000 ))" > "$out/control/seconds_ms.txt"
  cp -r reports/report.md metrics/finetune_control metrics/evaluate_control metrics/analyze "$out/control/"
fi
