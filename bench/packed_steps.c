/* packed_steps.c - the AVX2 packed microkernel alone (fr_gemm_packed_f32_avx2, gates_avx2.c) as a batch
 * split's threads run it: each of NTHR pthreads (one a core) takes T steps of C[t] := A @ R + C[t] on
 * its own M rows, all on one shared packed R, C[t] a step's rows of xp (batch-major: T*N floats apart,
 * as the engine's xp rows are), beta 1.  Prints each thread's best of 31 rounds (us a step, GFLOP/s):
 * what the product can do at a shape with no Python, ctypes or GIL in the loop (bench/build_ab.py
 * kernel has all three, which dominate below ~100 us a step), next to the whole call's time
 * (bench/NOTES.md 54).
 *
 * Build and run (AVX2 CPU), from the repository root:
 *   cc -O3 -mavx2 -mfma -fno-math-errno -falign-functions=64 -Ifastrnn/_kernels bench/packed_steps.c \
 *      -lpthread -lm -o /tmp/packed_steps
 *   /tmp/packed_steps M K N T NTHR      e.g. 8 256 1024 100 2 (lstm t100-b16-h256, 2 threads)
 */
#include "gates_avx2.c"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "harness.h"

enum { ROUNDS = 31, MAX_THREADS = 16 };

static int M, K, N, T;
static const float *P;   /* R's panels, shared by every thread */

typedef struct {
    float *A, *C, *work;
    double step_s;
    pthread_barrier_t *start;
} Part;

static void *steps(void *arg)
{
    Part *p = arg;
    pthread_barrier_wait(p->start);   /* all threads start together, as a pool's parts do */
    const double t0 = now();
    for (int t = 0; t < T; t++)
        fr_gemm_packed_f32_avx2(M, N, K, p->A, K, P, 1.0f, p->C + (long)t * N, T * N, p->work);
    p->step_s = (now() - t0) / T;
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: %s M K N T NTHR\n", argv[0]);
        return 2;
    }
    M = atoi(argv[1]), K = atoi(argv[2]), N = atoi(argv[3]), T = atoi(argv[4]);
    const int nthr = atoi(argv[5]);
    if (M < 1 || K < 1 || N < 1 || T < 1 || nthr < 1 || nthr > MAX_THREADS) {
        fprintf(stderr, "%s: expected M, K, N, T >= 1 and 1 <= NTHR <= %d\n", argv[0], MAX_THREADS);
        return 2;
    }
    float *R = floats((long)K * N, 0.1f), *packed = floats(FR_PACKED_SIZE(K, N) + 64, 0.0f);
    fr_pack_panels_f32_avx2(R, K, N, N, packed);
    P = packed;
    Part parts[MAX_THREADS];
    double best[MAX_THREADS];
    for (int i = 0; i < nthr; i++) {
        parts[i].A = floats((long)M * K, 1.0f);
        parts[i].C = floats((long)M * T * N, 0.0f);
        parts[i].work = floats(FR_PACKED_A_SIZE(M, K), 0.0f);
        best[i] = 1e30;
    }
    for (int r = 0; r < ROUNDS; r++) {
        pthread_barrier_t start;
        pthread_t th[MAX_THREADS];
        pthread_barrier_init(&start, NULL, nthr);
        for (int i = 0; i < nthr; i++) {
            parts[i].start = &start;
            pthread_create(&th[i], NULL, steps, &parts[i]);
        }
        for (int i = 0; i < nthr; i++) pthread_join(th[i], NULL);
        pthread_barrier_destroy(&start);
        for (int i = 0; i < nthr; i++)
            if (parts[i].step_s < best[i]) best[i] = parts[i].step_s;
    }
    for (int i = 0; i < nthr; i++)
        printf("M=%d K=%d N=%d T=%d, thread %d of %d: best %.1f us a step, %.1f GFLOP/s\n", M, K, N, T, i, nthr,
               best[i] * 1e6, 2.0 * M * K * N / best[i] / 1e9);
    return 0;
}
