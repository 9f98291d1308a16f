/* harness.h - what every C harness in bench/ shares: a monotonic clock and random test arrays.
 * Included by relative path, so each harness's build line in its header stays as it is. */
#ifndef FR_BENCH_HARNESS_H
#define FR_BENCH_HARNESS_H

#include <stdlib.h>
#include <time.h>

/* seconds on the monotonic clock */
static inline double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* n floats on a 64-byte line, uniform in [-scale/2, scale/2] (scale 0: zeros) */
static inline float *floats(long n, float scale)
{
    float *p = aligned_alloc(64, (size_t)(n * 4 + 63) / 64 * 64);
    for (long i = 0; i < n; i++) p[i] = scale * (rand() / (float)RAND_MAX - 0.5f);
    return p;
}

#endif
