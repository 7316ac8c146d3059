/*
 * Benchmark workload: alloc/free pairs of mixed sizes, mostly malloc, some
 * calloc, posix_memalign and aligned_alloc; one in 100,000 blocks is leaked.
 *
 * With a second argument N, each block is instead freed N pairs later: N
 * blocks stay live throughout (none leaked), as in a program with a heap.
 *
 * Protocol: prints "ready <pid>", waits for "go", runs, prints
 * "<pairs> <nanoseconds>", waits for "exit" (or EOF).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

__attribute__((noinline)) static void *allocate(unsigned i, size_t size) {
    void *p = NULL;
    switch (i % 100) {
    case 0 ... 89: return malloc(size);
    case 90 ... 93: return calloc(1 + size / 64, 64);
    case 94 ... 96: return posix_memalign(&p, 32, size) == 0 ? p : NULL;
    default: return aligned_alloc(64, (size + 63) & ~(size_t)63);
    }
}

int main(int argc, char **argv) {
    long pairs = argc > 1 ? atol(argv[1]) : 1000000;
    long hold = argc > 2 ? atol(argv[2]) : 0;
    char **held = hold > 0 ? calloc((size_t)hold, sizeof *held) : NULL;
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* Warm the allocator up before anything is measured. */
    for (unsigned i = 0; i < 10000; i++)
        free(allocate(i, 16 + (i * 37) % 2048));
    printf("ready %d\n", (int)getpid());
    char line[32];
    if (!fgets(line, sizeof line, stdin) || strncmp(line, "go", 2) != 0)
        return 1;
    uint64_t t0 = now_ns();
    for (long n = 0; n < pairs; n++) {
        unsigned i = (unsigned)n;
        char *p = allocate(i, 16 + (i * 37) % 2048);
        if (p)
            p[0] = (char)i;
        if (held) {
            free(held[n % hold]);
            held[n % hold] = p;
        } else if (n % 100000 != 99999) {
            free(p);
        }
    }
    uint64_t t1 = now_ns();
    printf("%ld %llu\n", pairs, (unsigned long long)(t1 - t0));
    while (fgets(line, sizeof line, stdin) && strncmp(line, "exit", 4) != 0)
        ;
    return 0;
}
