#!/usr/bin/env python3
"""What a restore costs per file and per byte, and how that grows with the
number of files: ringvault (N=1) beside restic, in one run on one machine.

Datasets, made once under WORK and kept for the next run:
- `files-<n>`: n files of 1 KiB of distinct random bytes each (so neither
  tool can deduplicate or compress them), 1,000 to a directory, for each n
  of --files (default 10000,100000,1000000);
- `bytes`: one file of --big-mib MiB (default 1024) of random bytes.

For each dataset each tool backs it up once (not timed) and restores it
into a new directory on WORK's file system after `sync`; the restore is
checked with `diff -r`. Prints a markdown table: wall and client CPU time,
peak RSS, and per file (µs) or per byte (ns, and MB/s), with ringvault's
ratio to restic's in the same run; then the slope between file counts
(µs per added file), which leaves out the fixed start-up.

Usage (bench/compare.sh builds the release binaries first):
  python3 bench/restore_scale.py --work /tmp/rv-scale --bin target/release
"""

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import die  # noqa: E402
from compare import PASSWORD, Restic, Ringvault, machine, same_tree, version  # noqa: E402

FILE_BYTES = 1024
PER_DIR = 1000


def make_files(root: Path, n: int) -> None:
    """n files of FILE_BYTES random bytes, PER_DIR to a directory."""
    if (root / ".done").exists():
        return
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    with open("/dev/urandom", "rb") as rnd:
        for i in range(n):
            d = root / f"d{i // PER_DIR:04}"
            if i % PER_DIR == 0:
                d.mkdir()
            (d / f"f{i % PER_DIR:04}").write_bytes(rnd.read(FILE_BYTES))
    (root / ".done").write_text("")


def make_big(root: Path, mib: int) -> None:
    """One file of mib MiB of random bytes."""
    if (root / ".done").exists():
        return
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    with open("/dev/urandom", "rb") as rnd, open(root / "big.bin", "wb") as out:
        for _ in range(mib):
            out.write(rnd.read(1 << 20))
    (root / ".done").write_text("")


def restored(target: Path, source: Path) -> Path:
    """Where a tool put the restored copy of source inside target."""
    for cand in (target / source.relative_to("/"), target / source.name, target):
        if (cand / ".done").exists():
            return cand
    die(f"cannot find the restored copy of {source} under {target}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--bin", type=Path, required=True, help="directory of the ringvault binaries")
    ap.add_argument("--files", default="10000,100000,1000000", help="comma-separated file counts")
    ap.add_argument("--big-mib", type=int, default=1024, help="size of the one large file, MiB")
    ap.add_argument("--no-restic", action="store_true", help="ringvault only")
    a = ap.parse_args()

    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    home = work / "home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir()
    env = dict(os.environ, HOME=str(home), RESTIC_PASSWORD=PASSWORD, RINGVAULT_PASSWORD=PASSWORD,
               RUST_LOG="warn")
    log = work / "commands.log"
    log.write_text("")
    datasets = []
    for n in [int(x) for x in a.files.split(",") if x]:
        print(f"making {n} files", file=sys.stderr)
        make_files(work / f"files-{n}", n)
        datasets.append((f"{n} files of 1 KiB", work / f"files-{n}", n, None))
    if a.big_mib > 0:
        print(f"making one file of {a.big_mib} MiB", file=sys.stderr)
        make_big(work / "bytes", a.big_mib)
        datasets.append((f"1 file of {a.big_mib} MiB", work / "bytes", None, a.big_mib << 20))

    rows = []
    for title, data, files, size in datasets:
        tools = [Ringvault(work, env, log, a.bin / "ringvault", a.bin / "ringvault-chunkserver", 1, 1)]
        if not a.no_restic:
            tools.append(Restic(work, env, log))
        results = {}
        for t in tools:
            shutil.rmtree(t.repo, ignore_errors=True)
            t.init()
            t.backup(data, "initial")
            target = work / f"restore-{t.repo.name}"
            shutil.rmtree(target, ignore_errors=True)
            subprocess.run(["sync"], check=True)
            run = t.restore(target)
            if not same_tree(data, restored(target, data)):
                die(f"{t.name}'s restore of {data} differs from it")
            t.stop()
            shutil.rmtree(target)
            shutil.rmtree(t.repo)
            results[t.name] = run
            print(f"  {title:<22} {t.name:<15} {run.wall:8.2f} s  cpu {run.cpu:7.2f} s  {run.rss / 2**20:6.0f} MiB",
                  file=sys.stderr)
        rows.append((title, files, size, results))

    print(f"Restore scaling, {machine()}; {version([a.bin / 'ringvault', '--version'])}, "
          f"{'' if a.no_restic else version(['restic', 'version'])}; restore target on {work}.\n")
    print("| dataset | tool | wall s | client CPU s | peak RSS MiB | per unit |")
    print("| --- | --- | --- | --- | --- | --- |")
    for title, files, size, results in rows:
        anchor = results.get("restic")
        for name, run in results.items():
            ratio = f" ({run.wall / anchor.wall:.2f}x)" if anchor and name != "restic" else ""
            unit = (f"{run.wall / files * 1e6:.0f} µs/file wall, {run.cpu / files * 1e6:.0f} µs/file CPU" if files
                    else f"{run.wall / size * 1e9:.2f} ns/byte wall ({size / run.wall / 1e6:.0f} MB/s), "
                         f"{run.cpu / size * 1e9:.2f} ns/byte CPU")
            print(f"| {title} | {name} | {run.wall:.2f}{ratio} | {run.cpu:.2f} | {run.rss / 2**20:.0f} | {unit} |")
    # What each further file costs, free of the fixed start-up (key
    # derivation, connecting): the slope between successive file counts.
    counted = [(files, results) for _, files, _, results in rows if files]
    if len(counted) > 1:
        print("\n| from | to | tool | wall µs per added file | CPU µs per added file |")
        print("| --- | --- | --- | --- | --- |")
        for (n0, r0), (n1, r1) in zip(counted, counted[1:]):
            for name in r1:
                if name in r0:
                    dn = n1 - n0
                    print(f"| {n0} | {n1} | {name} | {(r1[name].wall - r0[name].wall) / dn * 1e6:.0f} "
                          f"| {(r1[name].cpu - r0[name].cpu) / dn * 1e6:.0f} |")


if __name__ == "__main__":
    main()
