#!/usr/bin/env bash
# The README's main job: installs Fashion-MNIST if it is missing, then trains
# and evaluates the default SparseNet on it. Extra arguments go to `train`
# (e.g. --epochs 4, --help).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist) ..."
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist fonts-dejavu-core >/dev/null
fi
# Each run gets its own folder (a run never overwrites another's results);
# pass --out to choose one, e.g. to --resume it.
out=()
case " $* " in
  *" --out "*|*" --out="*) ;;
  *) out=(--out "runs/main-$(date -u +%Y%m%d-%H%M%S)") ;;
esac
exec cargo run --release --example train -- "${out[@]}" "$@"
