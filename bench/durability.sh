#!/usr/bin/env bash
# bench/durability.sh [WORKDIR]
#
# Re-replication and rebalancing on three local chunk servers (N=3, W=2):
# the time to refill a node replaced with an empty disk, and the bytes moved
# when a fourth node joins, against the ideal. The source is the benchmark
# dataset (../shared/bench) plus 512 MiB of random data, so that more than
# 1 GiB is stored per replica. Prints a table (tests/examples/durability.rs).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED:-$here/../shared}
work=${1:-/tmp/ringvault-bench}
mkdir -p "$work"
work=$(realpath "$work")

cargo build --release --locked --bins --manifest-path "$here/Cargo.toml" >&2
if [ ! -d "$work/dataset" ]; then
  "$shared/bench/make-dataset.sh" "$work/dataset" >&2
fi
mkdir -p "$work/random"
if [ ! -f "$work/random/r7.bin" ]; then
  for i in 0 1 2 3 4 5 6 7; do
    head -c $((64 << 20)) /dev/urandom >"$work/random/r$i.bin"
  done
fi
cargo run --release --locked --manifest-path "$here/Cargo.toml" -p ringvault-tests \
  --example durability -- "$work/dataset" "$work/random"
