#!/usr/bin/env python3
"""Side-by-side benchmark: ringvault (N=1 and N=3, W=2) against restic, borg
and rustic on the shared benchmark dataset, on one machine, in one run.

Run it through bench/compare.sh, which installs the tools and builds
ringvault first. Each round backs up a fresh copy of the dataset with every
tool (initial backup), again with nothing changed, again after
../shared/bench/mutate-dataset.sh, and restores the latest snapshot, which is
compared byte for byte with the source (`diff -r --no-dereference`). Tools
run interleaved within each phase, in an order that rotates between rounds.
As root, each restore goes to a new, empty ext4 file system (a loop-mounted
sparse image), so that no tool's figure depends on what ran before it;
`--restore-dirs` restores to directories instead.

Figures per run: wall time (s), client CPU time (user + system, s), client
peak RSS (MiB, from wait4's ru_maxrss), bytes stored by all servers or in the
repository (apparent size, as `du -sb`), and for ringvault the CPU time of
its chunk servers, the sealed bytes of new chunks and the UDP bytes the
agent sent. The tables give the median over rounds and each ringvault
figure as a ratio to the best of restic, borg and rustic in the same run.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import die, free_udp_base_port  # noqa: E402

ANCHORS = ["restic", "borg", "rustic"]
PHASES = [
    ("initial", "initial backup"),
    ("nochange", "backup with no change"),
    ("incremental", "incremental backup after mutate-dataset.sh"),
    ("restore", "full restore of the latest snapshot"),
]
# The targets: ratio of ringvault's wall time to the fastest anchor.
WALL_TARGETS = {
    "initial": {1: 0.6, 3: 1.0},
    "nochange": {1: 0.5, 3: 0.5},
    "incremental": {1: 0.5, 3: 0.7},
    "restore": {1: 0.7, 3: 0.7},
}
RSS_TARGET = 0.5  # of restic's peak RSS
WIRE_TARGET = 1.1  # UDP bytes sent / sealed bytes of new chunks
STORED_TARGET = 0.05  # per-replica bytes within 5% of restic's repository
PASSWORD = "compare-benchmark-password"
COMMAND_TIMEOUT = 1200  # s, for any one command
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    """One measured command."""

    wall: float  # s
    cpu: float  # s, user + system of the client
    rss: int  # bytes, peak resident set of the client
    stored: int = 0  # bytes, all servers or the whole repository
    server_cpu: float | None = None  # s, all chunk servers
    sealed: int | None = None  # bytes, sealed new chunks
    wire: int | None = None  # bytes, UDP datagrams the agent sent
    verified: bool | None = None  # restore equal to the source


def measured(cmd: list, env: dict, cwd: Path | None = None, log: Path | None = None) -> tuple[Run, str]:
    """Runs cmd to completion; returns its figures and its stdout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen([str(c) for c in cmd], env=env, cwd=cwd, stdout=out, stderr=err)
        deadline = start + COMMAND_TIMEOUT
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                die(f"{cmd[0]} took more than {COMMAND_TIMEOUT} s: {' '.join(map(str, cmd))}")
            time.sleep(0.005)
        wall = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        if log:
            with open(log, "a") as f:
                f.write(f"$ {' '.join(map(str, cmd))}\n{stdout}{stderr}\n")
        if proc.returncode != 0:
            die(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{stderr[-4000:]}")
        return Run(wall=wall, cpu=ru.ru_utime + ru.ru_stime, rss=ru.ru_maxrss * 1024), stdout


def du(path: Path) -> int:
    """Apparent size of everything under path, bytes (as `du -sb`)."""
    total = 0
    for d, _, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(d, n)).st_size
            except FileNotFoundError:
                pass
    return total


def same_tree(a: Path, b: Path) -> bool:
    return subprocess.run(["diff", "-r", "--no-dereference", "-q", a, b], stdout=subprocess.DEVNULL).returncode == 0


def restored_root(target: Path, source: Path) -> Path:
    """Where a tool put the restored copy of source inside target."""
    for cand in (target / source.relative_to("/"), target / source.name, target):
        if (cand / ".bench-dataset").exists():
            return cand
    die(f"cannot find the restored dataset under {target}")


class Tool:
    name: str
    replicas: int = 1

    def __init__(self, work: Path, env: dict, log: Path):
        self.work, self.env, self.log = work, env, log
        self.repo = work / f"repo-{self.name}"

    def run(self, cmd: list, cwd: Path | None = None) -> tuple[Run, str]:
        return measured(cmd, self.env, cwd, self.log)

    def stored(self) -> int:
        return du(self.repo)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class Restic(Tool):
    name = "restic"

    def init(self):
        self.run(["restic", "-r", self.repo, "init"])

    def backup(self, data: Path, phase: str) -> Run:
        return self.run(["restic", "-r", self.repo, "backup", "-q", data])[0]

    def restore(self, target: Path) -> Run:
        return self.run(["restic", "-r", self.repo, "restore", "latest", "-q", "--target", target])[0]


class Borg(Tool):
    name = "borg"

    def init(self):
        self.run(["borg", "init", "--encryption=repokey", self.repo])

    def backup(self, data: Path, phase: str) -> Run:
        self.last = phase
        return self.run(["borg", "create", f"{self.repo}::{phase}", data])[0]

    def restore(self, target: Path) -> Run:
        target.mkdir(parents=True)
        return self.run(["borg", "extract", f"{self.repo}::{self.last}"], cwd=target)[0]


class Rustic(Tool):
    name = "rustic"

    def init(self):
        self.run(["rustic", "-r", self.repo, "init"])

    def backup(self, data: Path, phase: str) -> Run:
        return self.run(["rustic", "-r", self.repo, "backup", data])[0]

    def restore(self, target: Path) -> Run:
        return self.run(["rustic", "-r", self.repo, "restore", "latest", target])[0]


class Ringvault(Tool):
    """A local ringvault cluster of `replicas` nodes and its repository."""

    def __init__(self, work, env, log, rv: Path, server: Path, replicas: int, quorum: int):
        self.name = f"ringvault N={replicas}"
        self.replicas, self.quorum = replicas, quorum
        self.rv, self.server = rv, server
        super().__init__(work, env, log)
        self.repo = work / f"cluster-n{replicas}"
        self.procs = []
        self.cpu_before = 0.0

    def init(self):
        base = free_udp_base_port(self.replicas)
        self.run([self.rv, "cluster", "init", "--dir", self.repo, "--nodes", self.replicas,
                  "--base-port", base, "--replicas", self.replicas, "--write-quorum", self.quorum])
        self.config = self.repo / "agent" / "agent.toml"
        self.start()
        self.run([self.rv, "--config", self.config, "init"])

    def start(self):
        for i in range(1, self.replicas + 1):
            node = self.repo / f"node-{i}"
            errlog = open(node / "server.log", "a")
            self.procs.append(subprocess.Popen(
                [self.server, "--config", node / "chunkserver.toml"],
                stdout=subprocess.DEVNULL, stderr=errlog, env=self.env))
        deadline = time.monotonic() + 30
        for i in range(1, self.replicas + 1):
            log = self.repo / f"node-{i}" / "server.log"
            while "chunk server listening" not in log.read_text():
                if time.monotonic() > deadline:
                    die(f"node {i} of {self.name} did not start: {log}")
                time.sleep(0.05)

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []

    def server_cpu(self) -> float:
        total = 0.0
        for p in self.procs:
            fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        return total

    def stored(self) -> int:
        return sum(du(self.repo / f"node-{i}" / "data") for i in range(1, self.replicas + 1))

    def measured_rv(self, args: list) -> tuple[Run, dict]:
        before = self.server_cpu()
        run, out = self.run([self.rv, "--config", self.config, "--json", "--no-progress", *args])
        run.server_cpu = self.server_cpu() - before
        lines = [line for line in out.splitlines() if line.startswith("{")]
        return run, json.loads(lines[-1]) if lines else {}

    def backup(self, data: Path, phase: str) -> Run:
        run, report = self.measured_rv(["backup", data])
        run.sealed = report["summary"]["sent_bytes"]
        run.wire = report["wire_bytes"]
        return run

    def restore(self, target: Path) -> Run:
        return self.measured_rv(["restore", "latest", "--target", target])[0]


def fresh_ext4_possible() -> bool:
    """Whether restores can each go to a new ext4 file system: root, with
    mkfs.ext4 and loop mounts."""
    return os.geteuid() == 0 and shutil.which("mkfs.ext4") is not None


def make_fresh_ext4(work: Path, name: str, size: int) -> Path:
    """A new ext4 file system of `size` bytes (a sparse image file under
    `work`, loop-mounted), its inode tables and journal written at mkfs time
    so that no lazy-init thread runs beside the restore; returns the mount
    point."""
    image, mnt = work / f"{name}.ext4", work / f"{name}.mnt"
    drop_fresh_ext4(work, name)
    subprocess.run(["truncate", "-s", str(size), image], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", image],
                   check=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", image, mnt], check=True)
    return mnt


def drop_fresh_ext4(work: Path, name: str) -> None:
    image, mnt = work / f"{name}.ext4", work / f"{name}.mnt"
    if mnt.is_mount():
        subprocess.run(["umount", mnt], check=True)
    if mnt.exists():
        mnt.rmdir()
    image.unlink(missing_ok=True)


def one_round(tools: list, r: int, dataset: Path, work: Path, shared: Path, log: Path,
              fresh_fs: bool) -> dict:
    """Runs every phase for every tool; returns {phase: {tool: Run}}."""
    data = work / "data"
    if data.exists():
        shutil.rmtree(data)
    subprocess.run(["cp", "-a", dataset, data], check=True)
    for t in tools:
        for p in [t.repo]:
            if p.exists():
                shutil.rmtree(p)
        t.init()
    order = tools[r % len(tools):] + tools[: r % len(tools)]
    results = {p: {} for p, _ in PHASES}
    for phase, title in PHASES:
        if phase == "incremental":
            subprocess.run([shared / "bench" / "mutate-dataset.sh", data, "1"], check=True,
                           stdout=open(work / "mutate.log", "w"))
        for t in order:
            if phase == "restore" and fresh_fs:
                # Each tool restores onto a new, empty ext4 file system: the
                # same conditions for every tool whatever ran before (see
                # below for what deletions cost ext4's inode allocator).
                name = f"restore-{t.repo.name}"
                mnt = make_fresh_ext4(work, name, 2 * du(data) + (1 << 30))
                subprocess.run(["sync"], check=True)
                target = mnt / "r"
                run = t.restore(target)
                run.verified = same_tree(data, restored_root(target, data))
                drop_fresh_ext4(work, name)
            elif phase == "restore":
                # Each tool restores into its own new directory on the disk
                # that holds the data, all deleted at the end of the round:
                # on ext4, creating files just after another tool's restore
                # was deleted spends up to a third of the restore in the
                # inode allocator (recently_deleted(), seen with perf). sync
                # first, so that no tool pays for another's writeback.
                target = work / f"restore-{t.repo.name}"
                if target.exists():
                    shutil.rmtree(target)
                subprocess.run(["sync"], check=True)
                run = t.restore(target)
                run.verified = same_tree(data, restored_root(target, data))
            else:
                run = t.backup(data, phase)
            run.stored = t.stored()
            results[phase][t.name] = run
            print(f"  round {r + 1} {phase:<11} {t.name:<15} {run.wall:7.2f} s  {run.rss / 2**20:6.0f} MiB  cpu {run.cpu:5.2f} s  server cpu {run.server_cpu or 0:5.2f} s"
                  + (f"  verified={run.verified}" if run.verified is not None else ""), file=sys.stderr)
    for t in tools:
        t.stop()
        shutil.rmtree(work / f"restore-{t.repo.name}", ignore_errors=True)
    return results


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_ratio(x):
    return "" if x is None else f" ({x:.2f}x)"


def report(rounds: list, tools: list, meta: dict) -> str:
    names = [t.name for t in tools]
    rv_tools = [t for t in tools if isinstance(t, Ringvault)]
    out = []
    w = out.append
    w("# ringvault benchmark: restic, borg and rustic side by side\n")
    w(f"Run on {meta['date']}, {meta['machine']}.\n")
    w(f"Dataset: {meta['dataset']}. {meta['rounds']} interleaved round(s); each figure is the median over"
      " rounds. Page cache warm, default settings of every tool, local repositories; ringvault runs"
      " local chunk servers on loopback (QUIC, mutual TLS) on the same 2 cores as the client.\n")
    w(f"Versions: {meta['versions']}.\n")
    w("Ratios in parentheses: ringvault's figure divided by the best of restic, borg and rustic in the"
      " same run (peak RSS: divided by restic's). Stored bytes are per replica for ringvault"
      " (all servers / N), ratio to restic's repository.\n")
    if meta["fresh_fs"]:
        w("Each restore goes to a new, empty ext4 file system (a sparse image on the data's disk,"
          " loop-mounted, made with its inode tables written), after `sync`: every tool meets the"
          " same file system whatever ran before it.\n")
    else:
        w("Restores go to new directories on the data's disk, after `sync`, and are deleted"
          " only at the end of the round, so that no tool pays for another's writeback; on ext4 the"
          " first tools of a round still pay for the previous round's deletions.\n")
    w("Produced by `bench/compare.sh`. What limits these figures, with profiles:"
      " [performance.md](performance.md).\n")
    med_of = {}
    for phase, title in PHASES:
        cells = {n: [rd[phase][n] for rd in rounds] for n in names}
        m = {}
        for n in names:
            runs = cells[n]
            m[n] = {k: med([getattr(x, k) for x in runs]) for k in
                    ("wall", "cpu", "rss", "stored", "server_cpu", "sealed", "wire")}
            m[n]["verified"] = all(x.verified for x in runs) if runs[0].verified is not None else None
        med_of[phase] = m
        best_wall = min(m[a]["wall"] for a in ANCHORS if a in m)
        best_cpu = min(m[a]["cpu"] for a in ANCHORS if a in m)
        restic = m.get("restic")
        w(f"\n## {title}\n")
        cols = "| tool | wall s | client CPU s | server CPU s | client peak RSS MiB | stored MB | sealed new MB | UDP sent MB |"
        if phase == "restore":
            cols += " byte-identical |"
        w(cols)
        w("|" + " --- |" * (cols.count("|") - 1))
        for t in tools:
            x = m[t.name]
            rv = isinstance(t, Ringvault)
            stored = x["stored"] / (t.replicas if rv else 1)
            row = [
                t.name,
                f"{x['wall']:.2f}" + (fmt_ratio(x["wall"] / best_wall) if rv else ""),
                f"{x['cpu']:.2f}" + (fmt_ratio(x["cpu"] / best_cpu) if rv else ""),
                f"{x['server_cpu']:.2f}" if x["server_cpu"] is not None else "",
                f"{x['rss'] / 2**20:.0f}" + (fmt_ratio(x["rss"] / restic["rss"]) if rv and restic else ""),
                f"{stored / 1e6:.1f}" + (fmt_ratio(stored / restic["stored"]) if rv and restic else ""),
                f"{x['sealed'] / 1e6:.1f}" if x["sealed"] is not None else "",
                f"{x['wire'] / 1e6:.1f}" if x["wire"] is not None else "",
            ]
            if phase == "restore":
                row.append("yes" if x["verified"] else "**NO**")
            w("| " + " | ".join(row) + " |")
    w("\n## Targets\n")
    w("| target | " + " | ".join(t.name for t in rv_tools) + " |")
    w("|" + " --- |" * (len(rv_tools) + 1))

    def verdict(value, limit):
        return f"{value:.2f}x (target ≤ {limit}x) {'met' if value <= limit else '**missed**'}"

    for phase, title in PHASES:
        best = min(med_of[phase][a]["wall"] for a in ANCHORS)
        w(f"| {title}: wall time vs fastest anchor | " + " | ".join(
            verdict(med_of[phase][t.name]["wall"] / best, WALL_TARGETS[phase][t.replicas]) for t in rv_tools) + " |")
    for phase, title in PHASES:
        w(f"| {title}: client peak RSS vs restic | " + " | ".join(
            verdict(med_of[phase][t.name]["rss"] / med_of[phase]["restic"]["rss"], RSS_TARGET) for t in rv_tools) + " |")
    for phase in ("initial", "incremental"):
        w(f"| {phase}: UDP bytes sent / sealed new bytes | " + " | ".join(
            verdict(med_of[phase][t.name]["wire"] / med_of[phase][t.name]["sealed"], WIRE_TARGET)
            for t in rv_tools) + " |")
    for phase in ("initial",):
        row = []
        for t in rv_tools:
            ratio = med_of[phase][t.name]["stored"] / t.replicas / med_of[phase]["restic"]["stored"]
            row.append(f"{ratio:.3f}x (target {1 - STORED_TARGET:.2f}–{1 + STORED_TARGET:.2f}x) "
                       + ("met" if abs(ratio - 1) <= STORED_TARGET or ratio < 1 else "**missed**"))
        w("| stored bytes per replica after the initial backup vs restic | " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"


def version(cmd: list) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except Exception as e:  # noqa: BLE001 - a version string is decoration
        return f"unknown ({e})"


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    return f"{os.cpu_count()} cores of {model}, {mem:.0f} GiB RAM, Linux {platform.release()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--shared", type=Path, required=True)
    ap.add_argument("--bin", type=Path, required=True, help="directory of the ringvault binaries")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", type=Path, help="also write the report here")
    ap.add_argument("--only", help="comma-separated subset of tools, for profiling runs")
    ap.add_argument("--restore-dirs", action="store_true",
                    help="restore to directories on the work disk even where a new ext4 file"
                         " system per restore is possible (root, mkfs.ext4)")
    a = ap.parse_args()

    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    home = work / "home"
    if home.exists():
        shutil.rmtree(home)
    home.mkdir()
    env = dict(os.environ, HOME=str(home), RESTIC_PASSWORD=PASSWORD, BORG_PASSPHRASE=PASSWORD,
               RUSTIC_PASSWORD=PASSWORD, RINGVAULT_PASSWORD=PASSWORD, RUSTIC_NO_PROGRESS="true",
               BORG_RELOCATED_REPO_ACCESS_IS_OK="yes", RUST_LOG="warn")
    log = work / "commands.log"
    log.write_text("")
    rv, server = a.bin / "ringvault", a.bin / "ringvault-chunkserver"
    tools = [
        Ringvault(work, env, log, rv, server, 1, 1),
        Ringvault(work, env, log, rv, server, 3, 2),
        Restic(work, env, log),
        Borg(work, env, log),
        Rustic(work, env, log),
    ]
    if a.only:
        keep = set(a.only.split(","))
        tools = [t for t in tools if t.name in keep or t.name.split()[0] in keep]
    files = sum(len(n) for _, _, n in os.walk(a.dataset))
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "dataset": f"`make-dataset.sh`, {du(a.dataset) / 1e9:.2f} GB in {files} files",
        "rounds": a.rounds,
        "fresh_fs": fresh_ext4_possible() and not a.restore_dirs,
        "versions": ", ".join([version([rv, "--version"]), version(["restic", "version"]),
                               version(["borg", "--version"]), version(["rustic", "--version"])]),
    }
    rounds = []
    try:
        for r in range(a.rounds):
            rounds.append(one_round(tools, r, a.dataset.resolve(), work, a.shared, log,
                                    meta["fresh_fs"]))
    finally:
        for t in tools:
            t.stop()
    if a.only:
        return
    text = report(rounds, tools, meta)
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
