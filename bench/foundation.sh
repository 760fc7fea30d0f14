#!/usr/bin/env bash
# bench/foundation.sh [WORKDIR]
#
# The newcomer's path on the benchmark dataset, timed: a first snapshot
# through `ringvault quickstart` (three local chunk servers, N=3, W=2), a
# second with no change, and a third after ../shared/bench/mutate-dataset.sh.
# Prints wall time, MB/s, bytes read and sent, and the agent's peak RSS
# (GNU time; the servers are separate processes and not counted), then a
# full restore verified byte for byte, and the bytes each server stores.
# restic 0.14's first backup of the same data is timed in the same run for
# scale. Needs ../shared/bench (or SHARED=DIR) and about 8 GB of disk.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
shared=${SHARED:-$here/../shared}
work=${1:-/tmp/ringvault-bench}
mkdir -p "$work"
work=$(realpath "$work")

cargo build --release --locked --bins --manifest-path "$here/Cargo.toml" >&2
rv=$here/target/release/ringvault

if [ ! -d "$work/dataset" ]; then
  "$shared/bench/make-dataset.sh" "$work/dataset" >&2
fi
rm -rf "$work/data" "$work/home" "$work/restore" "$work/restic-repo"
cp -a "$work/dataset" "$work/data"
export HOME=$work/home
trap '"$rv" quickstart --stop >/dev/null 2>&1 || true' EXIT
bytes=$(du -sb "$work/data" | cut -f1)

run() { # label, then the command
  local label=$1; shift
  /usr/bin/time -f '%e %M %U %S' -o "$work/time.txt" "$@" --json >"$work/out.json" 2>"$work/err.txt" || {
    cat "$work/err.txt" >&2; exit 1; }
  read -r wall rss user sys <"$work/time.txt"
  local json; json=$(grep '^{' "$work/out.json" | tail -n 1)
  local read sent wire
  read=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["summary"]["bytes_read"])' "$json")
  sent=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["summary"]["sent_bytes"])' "$json")
  wire=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["wire_bytes"])' "$json")
  printf '| %s | %s | %.0f | %.1f | %s | %s | %s | %.0f |\n' "$label" "$wall" \
    "$(echo "$bytes / $wall / 1000000" | bc -l)" "$(echo "$user + $sys" | bc -l)" \
    "$read" "$sent" "$wire" "$(echo "$rss / 1024" | bc -l)"
}

echo "dataset: $bytes bytes, $(find "$work/data" -type f | wc -l) files; $(nproc) cores"
echo
echo "| phase | wall s | MB/s of dataset | client CPU s | bytes read | sealed bytes sent | UDP bytes sent | client peak RSS MiB |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
run "first snapshot (quickstart)" "$rv" quickstart --once "$work/data"
run "no change" "$rv" backup "$work/data"
"$shared/bench/mutate-dataset.sh" "$work/data" 1 >"$work/mutate.log"
run "after mutate-dataset.sh 1" "$rv" backup "$work/data"

/usr/bin/time -f '%e %M' -o "$work/time.txt" "$rv" restore latest --target "$work/restore" >/dev/null
read -r wall rss <"$work/time.txt"
if diff -r --no-dereference "$work/data" "$work/restore/data" >/dev/null; then verdict=identical; else verdict=DIFFERENT; fi
echo
echo "full restore: $wall s, client peak RSS $((rss / 1024)) MiB, $verdict to the source"
echo
for n in 1 2 3; do
  echo "node-$n stores $(du -sb "$HOME/.local/share/ringvault/quickstart/node-$n/data" | cut -f1) bytes"
done

if command -v restic >/dev/null; then
  export RESTIC_PASSWORD=bench
  restic init -q --repo "$work/restic-repo" >/dev/null
  /usr/bin/time -f '%e %M' -o "$work/time.txt" restic -q --repo "$work/restic-repo" backup "$work/dataset" >/dev/null
  read -r wall rss <"$work/time.txt"
  echo
  echo "restic $(restic version | cut -d' ' -f2), first backup of the same dataset to a local repository: $wall s, peak RSS $((rss / 1024)) MiB, repository $(du -sb "$work/restic-repo" | cut -f1) bytes"
fi
