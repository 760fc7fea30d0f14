#!/usr/bin/env bash
# bench/compare.sh [WORKDIR] [--rounds N] [--out FILE] [--only TOOLS] [--restore-dirs]
#
# ringvault (N=1, and N=3 with W=2) against restic, borg and rustic on the
# shared benchmark dataset, interleaved on this machine: initial backup,
# backup with no change, incremental backup after mutate-dataset.sh, full
# restore verified byte for byte. Prints markdown tables (see
# bench/compare.py for what each figure is). To refresh the committed
# figures:  bench/compare.sh /tmp/rv-compare --rounds 3 --out docs/benchmarks.md
#
# Installs restic and borgbackup (apt) and rustic (cargo install rustic-rs)
# when missing, builds ringvault in release mode, and builds the dataset
# with ../shared/bench/make-dataset.sh unless DATASET names one. Needs about
# 12 GB of disk under WORKDIR (default /tmp/ringvault-compare).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED:-$here/../shared}
work=/tmp/ringvault-compare
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then work=$1; shift; fi
mkdir -p "$work"
work=$(realpath "$work")

if ! command -v restic >/dev/null || ! command -v borg >/dev/null; then
  sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic borgbackup >&2
fi
if ! command -v rustic >/dev/null; then
  cargo install --locked rustic-rs >&2
fi

cargo build --release --locked --bins --manifest-path "$here/Cargo.toml" >&2

dataset=${DATASET:-$work/dataset}
if [ ! -f "$dataset/.bench-dataset" ]; then
  "$shared/bench/make-dataset.sh" "$dataset" >&2
fi

exec python3 "$here/bench/compare.py" --work "$work" --dataset "$dataset" --shared "$shared" \
  --bin "$here/target/release" "$@"
