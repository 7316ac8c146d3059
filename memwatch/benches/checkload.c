/*
 * Workload for `memwatch check` against valgrind's memcheck: PAIRS
 * alloc/free pairs of 16-511 bytes, each block filled and then hashed WORK
 * times over (WORK = 0: a loop that does nothing but allocate); one block
 * in 10,000 is lost and one in 10,000 kept in a global array (reachable).
 * No stdio. Usage: checkload PAIRS WORK
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EVERY 10000

void *volatile sink;
void *kept[1 << 12];
static unsigned nkept;

int main(int argc, char **argv) {
    long pairs = argc > 1 ? atol(argv[1]) : 1000000;
    int work = argc > 2 ? atoi(argv[2]) : 0;
    void *ring[256] = {0};
    uint64_t x = 88172645463325252ull, h = 1469598103934665603ull;
    for (long i = 0; i < pairs; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        size_t size = 16 + x % 496;
        unsigned char *p = malloc(size);
        memset(p, (int)i, size);
        for (int w = 0; w < work; w++)
            for (size_t j = 0; j < size; j++)
                h = (h ^ p[j]) * 1099511628211ull;
        if (i % EVERY == 1 && nkept < sizeof kept / sizeof kept[0]) {
            kept[nkept++] = p;
            continue;
        }
        if (i % EVERY == 2) {
            sink = p;
            sink = NULL;
            continue;
        }
        free(ring[i & 255]);
        ring[i & 255] = p;
    }
    for (int i = 0; i < 256; i++)
        free(ring[i]);
    sink = (void *)(uintptr_t)h;
    /* Dead frames keep no copies of lost pointers (see lossy.c). */
    volatile char scrub[16384];
    memset((char *)scrub, 0, sizeof scrub);
    return 0;
}
