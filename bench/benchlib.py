"""Helpers shared by the benchmark scripts in bench/."""

import random
import socket
import sys


def die(msg: str) -> None:
    """Stops the benchmark with a message on stderr."""
    print(f"bench: {msg}", file=sys.stderr)
    sys.exit(1)


def free_udp_base_port(n: int) -> int:
    """A port such that it and the n-1 after it are free for UDP on loopback."""
    for _ in range(200):
        base = random.randint(20000, 60000 - n)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    die("no free UDP ports")
