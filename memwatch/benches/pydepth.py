"""Benchmark workload: allocations under a known number of Python frames,
to time memwatch's walk of the interpreter's frames.

Protocol: prints "ready <pid>"; for each "go FRAMES N" makes and drops N
2 KB buffers (libc allocations) with FRAMES Python frames on the stack
(FRAMES >= 3), then prints "done"; "exit" (or EOF) ends it.
"""
import os
import sys


def down(levels, n):
    if levels > 0:
        return down(levels - 1, n)
    for _ in range(n):
        buf = bytearray(2000)
        del buf
    return n


def main():
    print("ready %d" % os.getpid(), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] != "go":
            return
        frames, n = int(words[1]), int(words[2])
        # <module>, main, then down() frames - 2 times.
        down(frames - 3, n)
        print("done", flush=True)


main()
