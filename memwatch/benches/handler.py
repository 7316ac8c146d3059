"""Benchmark workload: a web handler's shape. Each request builds a dict,
serializes it to JSON and keeps one response in ten.

Protocol: prints "ready <pid>", waits for "go", handles REQUESTS requests,
prints "<requests> <nanoseconds>", waits for "exit" (or EOF).
"""
import json
import os
import sys
import time

REQUESTS = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
KEPT = []


def handle(i):
    request = {"id": i, "user": "user-%d" % (i % 1000), "items": [i, i + 1, i + 2], "note": "x" * (i % 64)}
    body = json.dumps(request)
    if i % 10 == 0:
        KEPT.append(body)
    return len(body)


def main():
    for i in range(1000):  # warm up
        handle(i)
    KEPT.clear()
    print("ready %d" % os.getpid(), flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    t0 = time.perf_counter_ns()
    for i in range(REQUESTS):
        handle(i)
    t1 = time.perf_counter_ns()
    print("%d %d" % (REQUESTS, t1 - t0), flush=True)
    sys.stdin.readline()


main()
