#!/usr/bin/env bash
# bench/pipeline_e2e.sh on an emulated slow host: every CPU core the pipeline may use is shared with a
# busy loop at nice 5, which leaves the pipeline about 75 % of each core (CFS weights 1024 against
# 335), so host-bound work runs about a third slower; the GPU is untouched.
# Usage, from the project root: bash bench/slow_host.sh SNLI_DIR OUT_DIR [CORES]   (CORES: default 0-3)
set -euo pipefail
cores=${3:-0-3}
busy=()
for _ in $(seq "$(taskset -c "$cores" nproc)"); do
  taskset -c "$cores" nice -n 5 sh -c 'while :; do :; done' &
  busy+=($!)
done
trap 'kill "${busy[@]}"' EXIT
taskset -c "$cores" bash bench/pipeline_e2e.sh "$1" "$2"
