#!/usr/bin/env bash
# Soak check: a long CPU training run keeps its speed and its memory flat.
#
# Trains on real CIFAR-10 for EPOCHS epochs in one process, reads the
# process's resident memory at every epoch's line, and fails when the last
# epoch trains more than 10% slower than the second, or when resident memory
# rises from the third epoch to the last by more than 10% (plus 16 MiB of
# allocator slack). The first full CIFAR-10 run (2026-12-07, before the fix
# of issue 33) fell from 352 to 169 images/s in 7 epochs and grew from 739
# to 1,222 MiB; tests/soak.rs is the short check that CI runs.
#
#   bash scripts/soak-cpu.sh                        # 12 epochs of 10,000 images
#   SUBSET=50000 EPOCHS=12 bash scripts/soak-cpu.sh # the full training set
#   OUT=measurements/soak-$(date -u +%F) bash scripts/soak-cpu.sh
#
# Run it on an otherwise idle machine: a compile beside it changes the speed.
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-12}
SUBSET=${SUBSET:-10000}
MODEL=${MODEL:-seed-v2}
DATA=${DATA:-../shared/data/cifar10-jpeg.tar.gz}
OUT=${OUT:-target/soak-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
cargo build --release --example train
log="$OUT/soak.log"
{
  echo "# $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD)$(git diff --quiet || echo '+changes')"
  echo "# $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; avx512f: $(grep -q avx512f /proc/cpuinfo && echo yes || echo no)"
  echo "# train --model $MODEL --dataset cifar10 --epochs $EPOCHS --train-subset $SUBSET"
} > "$log"
target/release/examples/train --model "$MODEL" --dataset cifar10 --data "$DATA" \
  --epochs "$EPOCHS" --train-subset "$SUBSET" --test-subset 10000 --label-smoothing 0.1 \
  --no-progress --out "$OUT/run" > "$OUT/train.log" 2>&1 &
pid=$!
# Each epoch's line with the resident memory read as it appears (the
# process writes its checkpoint and plot after the line, so a poll every
# 0.2 s sees it alive; a line that appears after the process ended gets the
# last reading).
seen=0
rss=0
report() {
  while [ "$seen" -lt "$(grep -c '^epoch' "$OUT/train.log" || true)" ]; do
    seen=$((seen + 1))
    echo "$(grep '^epoch' "$OUT/train.log" | sed -n "${seen}p")  rss ${rss} MiB" | tee -a "$log"
  done
}
while kill -0 "$pid" 2>/dev/null; do
  now=$(awk '/^VmRSS/ {print int($2 / 1024)}' "/proc/$pid/status" 2>/dev/null || true)
  [ -n "$now" ] && rss=$now
  report
  sleep 0.2
done
report
wait "$pid" || { echo "train failed:"; tail -5 "$OUT/train.log"; exit 1; }
python3 - "$log" <<'PY'
import re, sys
rows = [l for l in open(sys.argv[1]) if l.startswith("epoch")]
speed = [float(re.search(r"(\d+) img/s", l).group(1)) for l in rows]
rss = [float(re.search(r"rss (\d+) MiB", l).group(1)) for l in rows]
ok = True
if len(speed) >= 3:
    ratio = speed[-1] / speed[1]
    print(f"speed: epoch 2 {speed[1]:.0f} img/s, last {speed[-1]:.0f} img/s ({ratio:.2f}x)")
    ok &= ratio >= 0.90
    growth = rss[-1] - rss[2]
    print(f"resident memory: epoch 3 {rss[2]:.0f} MiB, last {rss[-1]:.0f} MiB ({growth:+.0f} MiB)")
    ok &= rss[-1] <= rss[2] * 1.10 + 16
print("soak:", "flat" if ok else "FAILED (slower or growing)")
sys.exit(0 if ok else 1)
PY
