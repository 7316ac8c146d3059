/*
 * Benchmark workload: alloc/free pairs of mixed sizes, mostly malloc, some
 * calloc, posix_memalign and aligned_alloc; one in 100,000 blocks is leaked.
 *
 * With a second argument N, each block is instead freed N pairs later: N
 * blocks stay live throughout (none leaked), as in a program with a heap.
 * With a third argument D (1 to 32), every allocation is made D distinct
 * functions deep (main → level D-1 → … → level 0 → allocate), for stack
 * walks of a known depth.
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

typedef void *(*level_fn)(unsigned, size_t);

/* Level k calls level k-1; level 0 allocates. No tail calls. */
#define LEVEL(k, next)                                                                              \
    __attribute__((noipa)) static void *level##k(unsigned i, size_t size) {                         \
        void *p = next(i, size);                                                                    \
        __asm__ volatile("" ::: "memory");                                                          \
        return p;                                                                                   \
    }
LEVEL(0, allocate)
LEVEL(1, level0) LEVEL(2, level1) LEVEL(3, level2) LEVEL(4, level3) LEVEL(5, level4)
LEVEL(6, level5) LEVEL(7, level6) LEVEL(8, level7) LEVEL(9, level8) LEVEL(10, level9)
LEVEL(11, level10) LEVEL(12, level11) LEVEL(13, level12) LEVEL(14, level13) LEVEL(15, level14)
LEVEL(16, level15) LEVEL(17, level16) LEVEL(18, level17) LEVEL(19, level18) LEVEL(20, level19)
LEVEL(21, level20) LEVEL(22, level21) LEVEL(23, level22) LEVEL(24, level23) LEVEL(25, level24)
LEVEL(26, level25) LEVEL(27, level26) LEVEL(28, level27) LEVEL(29, level28) LEVEL(30, level29)
LEVEL(31, level30)

static const level_fn levels[32] = {
    level0,  level1,  level2,  level3,  level4,  level5,  level6,  level7,  level8,  level9,  level10,
    level11, level12, level13, level14, level15, level16, level17, level18, level19, level20, level21,
    level22, level23, level24, level25, level26, level27, level28, level29, level30, level31,
};

int main(int argc, char **argv) {
    long pairs = argc > 1 ? atol(argv[1]) : 1000000;
    long hold = argc > 2 ? atol(argv[2]) : 0;
    long depth = argc > 3 ? atol(argv[3]) : 0;
    /* Depth 0: allocate() straight from main, as before depths existed. */
    level_fn alloc = depth >= 1 && depth <= 32 ? levels[depth - 1] : allocate;
    char **held = hold > 0 ? calloc((size_t)hold, sizeof *held) : NULL;
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* Warm the allocator up before anything is measured. */
    for (unsigned i = 0; i < 10000; i++)
        free(alloc(i, 16 + (i * 37) % 2048));
    printf("ready %d\n", (int)getpid());
    char line[32];
    if (!fgets(line, sizeof line, stdin) || strncmp(line, "go", 2) != 0)
        return 1;
    uint64_t t0 = now_ns();
    for (long n = 0; n < pairs; n++) {
        unsigned i = (unsigned)n;
        char *p = alloc(i, 16 + (i * 37) % 2048);
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
