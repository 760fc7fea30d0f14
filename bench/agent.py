#!/usr/bin/env python3
"""Continuous-backup benchmark: `ringvault agent` watching many files.

Starts a local three-node cluster (N=3, W=2), makes FILES small files in
directories of 100, and runs `ringvault agent` on them. Then prints:

- idle cost: the agent's CPU time over IDLE seconds with nothing changing,
  and its resident memory (VmRSS, and the peak VmHWM since start);
- latency from a file's close to a stored snapshot holding it (the record
  is written only after every chunk has W copies), p50 and p99 over EDITS
  edits of small files, one at a time;
- catch-up: the time from the end of a burst of BURST file changes to a
  stored snapshot holding all of them.

The agent is asked over its control socket (what `ringvault status` does).
Usage: bench/agent.py [--work DIR] [--files N] [--edits N] [--burst N]
                      [--quiet-ms MS] [--idle S] [--bin DIR]
"""

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import die, free_udp_base_port  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PASSWORD = "agent-benchmark"


def status(sock_path):
    """The agent's status, or None when it does not answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(sock_path))
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return json.loads(data)
    except (OSError, ValueError):
        return None


def wait_snapshot_after(sock_path, before_id, limit=600):
    """Polls every 5 ms until a snapshot other than before_id is stored and
    nothing is waiting or running; returns the time it was seen."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        st = status(sock_path)
        last = (st or {}).get("last_snapshot") or {}
        if st and last.get("id") not in (None, before_id) and st["dirty_paths"] == 0 \
                and not st["full_scan_pending"] and st["in_progress"] is None:
            return time.monotonic(), last["id"]
        time.sleep(0.005)
    die(f"no new snapshot within {limit} s")


def proc_cpu(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_mem(pid):
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0]) * 1024
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ringvault-agent-bench"))
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--edits", type=int, default=200)
    ap.add_argument("--burst", type=int, default=10_000)
    ap.add_argument("--quiet-ms", type=int, default=500)
    ap.add_argument("--idle", type=float, default=30)
    ap.add_argument("--bin", type=Path, default=Path(__file__).resolve().parent.parent / "target" / "release")
    a = ap.parse_args()

    rv, server = a.bin / "ringvault", a.bin / "ringvault-chunkserver"
    work = a.work.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    env = dict(os.environ, HOME=str(work / "home"), RINGVAULT_PASSWORD=PASSWORD, RINGVAULT_LOG="warn")
    base = free_udp_base_port(3)
    cluster = work / "cluster"
    subprocess.run([rv, "cluster", "init", "--dir", cluster, "--nodes", "3", "--base-port", str(base)],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    servers = [subprocess.Popen([server, "--config", cluster / f"node-{i}" / "chunkserver.toml"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in (1, 2, 3)]
    agent = None
    try:
        watched = work / "watched"
        t = time.monotonic()
        for i in range(a.files):
            d = watched / f"d{i // 100:05}"
            if i % 100 == 0:
                d.mkdir(parents=True)
            (d / f"f{i % 100:03}.txt").write_text(f"file {i}\n" * (1 + i % 50))
        made = time.monotonic() - t
        cfg = cluster / "agent" / "agent.toml"
        cfg.write_text(cfg.read_text() + f'state-dir = "{work / "state"}"\npaths = ["{watched}"]\n'
                       f"quiet-ms = {a.quiet_ms}\nmax-delay-ms = 30000\n")
        time.sleep(0.5)  # the servers bind
        subprocess.run([rv, "--config", cfg, "init"], env=env, check=True, stdout=subprocess.DEVNULL)
        sock = work / "state" / "default" / "agent.sock"
        log = open(work / "agent.log", "w")
        t0 = time.monotonic()
        agent = subprocess.Popen([rv, "--config", cfg, "agent"], env=dict(env, RINGVAULT_LOG="info"),
                                 stdout=subprocess.DEVNULL, stderr=log)
        time.sleep(0.2)
        first_at, first_id = wait_snapshot_after(sock, None)
        first = first_at - t0

        # Idle.
        time.sleep(3)
        cpu0 = proc_cpu(agent.pid)
        time.sleep(a.idle)
        idle_cpu = proc_cpu(agent.pid) - cpu0
        mem = proc_mem(agent.pid)
        st = status(sock)
        assert st["last_snapshot"]["id"] == first_id, "a snapshot was taken while nothing changed"

        # Latency, one edit at a time.
        files = sorted(watched.glob("d*/f*.txt"))
        rng = random.Random(1)
        lat = []
        last_id = first_id
        for e in range(a.edits):
            p = rng.choice(files)
            with open(p, "a") as f:
                f.write(f"edit {e}\n")
            closed = time.monotonic()
            seen, last_id = wait_snapshot_after(sock, last_id)
            lat.append(seen - closed)

        # Catch-up after a burst.
        for p in rng.sample(files, min(a.burst, len(files))):
            with open(p, "a") as f:
                f.write("burst\n")
        burst_end = time.monotonic()
        seen, last_id = wait_snapshot_after(sock, last_id)
        catch_up = seen - burst_end
        mem_after = proc_mem(agent.pid)
    finally:
        if agent:
            agent.terminate()
            agent.wait(timeout=90)
        for s in servers:
            s.terminate()
        for s in servers:
            s.wait(timeout=30)

    q = sorted(lat)
    p = lambda x: q[min(len(q) - 1, int(round(x * (len(q) - 1))))]
    mib = 2 ** 20
    print(f"# ringvault agent benchmark ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores)\n")
    print(f"{a.files} files in {a.files // 100} directories (made in {made:.1f} s); three local chunk servers, "
          f"N=3, W=2; quiet-ms {a.quiet_ms}, max-delay-ms 30000.\n")
    print("| measure | value | target |")
    print("| --- | --- | --- |")
    print(f"| first snapshot (full scan at start) | {first:.1f} s | |")
    print(f"| CPU while idle, {a.idle:.0f} s | {idle_cpu:.2f} s ({100 * idle_cpu / a.idle:.2f}% of a core) | no scans |")
    print(f"| RSS while idle / peak since start | {mem['VmRSS'] / mib:.0f} / {mem['VmHWM'] / mib:.0f} MiB | ≤ 150 MB |")
    print(f"| close → snapshot on W replicas, p50 / p99 over {len(lat)} edits | {statistics.median(lat):.3f} / {p(0.99):.3f} s"
          f" | p99 ≤ {a.quiet_ms / 1000 + 1:.1f} s |")
    print(f"| catch-up after {a.burst} changed files (from the burst's end) | {catch_up:.2f} s | |")
    print(f"| RSS after the burst / peak | {mem_after['VmRSS'] / mib:.0f} / {mem_after['VmHWM'] / mib:.0f} MiB | |")


if __name__ == "__main__":
    main()
