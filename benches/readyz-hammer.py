#!/usr/bin/env python3
"""Probes GET /readyz of a load test's service at a fixed rate, for a bounded time.

Usage: readyz-hammer.py UNDER_PID RATE SECONDS [CONNECTIONS]

Finds the `tokenwarden serve` process among the descendants of UNDER_PID (the load test or a
shell running it) by its LISTEN_ADDR, waits until its /readyz answers 200 (every user loaded,
so the run phase is starting), then sends RATE requests a second over CONNECTIONS keep-alive
loopback connections for SECONDS, and prints how many went out and the answers' statuses.
Loopback only; it stops after SECONDS whatever happens (and gives up after 10 minutes of
waiting for the service).
"""
import collections
import http.client
import os
import sys
import threading
import time


def descendants(root):
    children = collections.defaultdict(list)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                # The name may hold spaces; the parent pid follows its closing parenthesis.
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children[parent].append(int(pid))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.extend(children[pid])
        todo.extend(children[pid])
    return found


def service_port(root):
    for pid in descendants(root):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        for var in env:
            if var.startswith(b"LISTEN_ADDR=127.0.0.1:"):
                return int(var.rsplit(b":", 1)[1])
    return None


def ready(port):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        c.request("GET", "/readyz")
        return c.getresponse().status == 200
    except OSError:
        return False


def main():
    root, rate, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    conns = int(sys.argv[4]) if len(sys.argv) > 4 else 8
    give_up = time.monotonic() + 600
    port = None
    while time.monotonic() < give_up:
        port = port or service_port(root)
        if port and ready(port):
            break
        time.sleep(0.2)
    else:
        sys.exit("readyz-hammer: no ready service found")

    deadline = time.monotonic() + seconds
    counts = collections.Counter()
    lock = threading.Lock()

    def worker():
        interval, conn, due = conns / rate, None, time.monotonic()
        while (now := time.monotonic()) < deadline:
            if now < due:
                time.sleep(min(due - now, deadline - now))
                continue
            due += interval
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/readyz")
                response = conn.getresponse()
                response.read()
                key = response.status
            except (OSError, http.client.HTTPException) as e:
                key, conn = type(e).__name__, None
                time.sleep(0.05)
            with lock:
                counts[key] += 1

    threads = [threading.Thread(target=worker) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(counts.values())
    print(f"readyz probes sent={total} ({total / seconds:.0f}/s) answers={dict(counts)}")


main()
