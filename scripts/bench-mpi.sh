#!/usr/bin/env bash
# Data-parallel scaling on the CPU (issue 22): the same short training run as
# one process and as RANKS processes under mpirun, with per-rank and with
# synchronised BatchNorm, alternating ROUNDS times (this machine is shared
# and drifts). Each run trains STEPS steps of batch BATCH on a CIFAR-10 subset
# and prints the trainer's epoch line (its img/s is the training steps'
# throughput); the table at the end gives the median images per second and
# steps per second of each setting and its ratio to one process.
#
#   bash scripts/bench-mpi.sh                       # seed-v2, 2 ranks, 3 rounds
#   MODEL=sparsenet-bc100 RANKS=4 bash scripts/bench-mpi.sh
#
# Needs the train example built with MPI (it builds it) and Open MPI.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-seed-v2}
RANKS=${RANKS:-2}
ROUNDS=${ROUNDS:-3}
BATCH=${BATCH:-64}
STEPS=${STEPS:-30}
DATA=${DATA:-../shared/data/cifar10-jpeg.tar.gz}
CORES=${CORES:-$(nproc)}
OUT=${OUT:-target/bench-mpi}
cargo build --release --features mpi --example train
rm -rf "$OUT"
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
common=(--model "$MODEL" --dataset cifar10 --data "$DATA" --train-subset $((BATCH * STEPS))
  --test-subset 100 --epochs 1 --steps-per-epoch "$STEPS" --batch-size "$BATCH" --no-progress)
{ date -u; uname -srm; lscpu | grep -E "Model name|^CPU\(s\)"; mpirun --version | head -1; } | tee "$OUT/machine.txt"
run() {
  local name=$1; shift
  echo "== $name: $*"
  "$@" --out "$OUT/run-$name" --overwrite 2>&1 | grep -E "^epoch|data-parallel" | tee -a "$OUT/$name.log"
}
for round in $(seq "$ROUNDS"); do
  echo "-- round $round"
  run one target/release/examples/train "${common[@]}" --threads "$CORES"
  run ranks mpirun --oversubscribe --bind-to none -np "$RANKS" target/release/examples/train "${common[@]}"
  run ranks-sync mpirun --oversubscribe --bind-to none -np "$RANKS" target/release/examples/train "${common[@]}" --sync-bn
done
python3 - "$OUT" "$BATCH" "$RANKS" "$CORES" <<'PY'
import re, statistics, sys
out, batch, ranks, cores = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rate = {}
for name in ("one", "ranks", "ranks-sync"):
    vals = [float(m.group(1)) for line in open(f"{out}/{name}.log")
            for m in [re.search(r"([0-9.]+) img/s", line)] if m]
    rate[name] = (statistics.median(vals), min(vals), max(vals))
label = {"one": f"1 process x {cores} threads",
         "ranks": f"{ranks} ranks (per-rank BN)",
         "ranks-sync": f"{ranks} ranks (synchronised BN)"}
print(f"\nbatch {batch}, {cores} cores in all; median (range) over the rounds")
for name, (med, lo, hi) in rate.items():
    print(f"  {label[name]:<32} {med:8.1f} img/s ({lo:.1f}-{hi:.1f})  {med / batch:6.2f} steps/s  "
          f"{med / rate['one'][0]:.2f}x one process")
PY
