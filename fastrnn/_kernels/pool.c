/* pool.c - the worker threads behind fr_pool_run and the spinning barrier (design: pool.h). */
#include <pthread.h>
#include <sched.h>
#include <time.h>
#include "pool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FR_PAUSE() _mm_pause()
#else
#define FR_PAUSE() ((void)0)
#endif

/* A waiting thread pauses for FR_SPIN_YIELD rounds (a few microseconds), then yields the core at each
 * round: on an oversubscribed machine the thread it waits for may be queued behind it, and a pure spin
 * would then wait a whole scheduler slice (measured: a T = 100 LSTM step loop 500x slower). */
#define FR_SPIN_YIELD 2000
static inline void relax(int *spins)
{
    if (++*spins > FR_SPIN_YIELD) sched_yield();
    else FR_PAUSE();
}

#define FR_POOL_SPIN_NS 200000L /* 0.2 ms: covers the Python overhead between two streaming steps */

static pthread_mutex_t run_lock = PTHREAD_MUTEX_INITIALIZER;   /* one fr_pool_run at a time */
static pthread_mutex_t wake_lock = PTHREAD_MUTEX_INITIALIZER;  /* guards sleeping workers */
static pthread_cond_t wake_cond = PTHREAD_COND_INITIALIZER;

static int n_workers;              /* created so far (tids 1..n_workers) */
static long start_gen[FR_POOL_MAX]; /* the generation a worker was created in: it waits for the next */
static int atfork_done;
static volatile long generation;   /* bumped for every task; workers wait for a change */
static volatile int job_nth;       /* threads in the current task */
static fr_task_fn volatile job_fn;
static void *volatile job_arg;
static volatile int job_left;      /* workers still running the current task */
static volatile int bar_count;     /* the task's barrier: arrivals this round */
static volatile int bar_sense;     /* flips when a round completes; every thread's sense starts at 0 */

static long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static void *worker(void *p)
{
    int tid = (int)(long)p;
    long seen = start_gen[tid]; /* not a fresh read: the task that created us may have started already */
    for (;;) {
        long start = now_ns(), gen;
        int spins = 0;
        /* spin a while for the next task, then sleep */
        while ((gen = __atomic_load_n(&generation, __ATOMIC_ACQUIRE)) == seen) {
            relax(&spins);
            if (spins % 256 == 0 && now_ns() - start > FR_POOL_SPIN_NS) {
                pthread_mutex_lock(&wake_lock);
                while ((gen = __atomic_load_n(&generation, __ATOMIC_ACQUIRE)) == seen)
                    pthread_cond_wait(&wake_cond, &wake_lock);
                pthread_mutex_unlock(&wake_lock);
                break;
            }
        }
        seen = gen;
        if (tid < job_nth) {
            job_fn(job_arg, tid, job_nth);
            __atomic_sub_fetch(&job_left, 1, __ATOMIC_ACQ_REL);
        }
    }
    return NULL;
}

/* A forked child has none of the parent's threads: start from zero workers there. */
static void after_fork_child(void)
{
    pthread_mutex_init(&run_lock, NULL);
    pthread_mutex_init(&wake_lock, NULL);
    pthread_cond_init(&wake_cond, NULL);
    n_workers = 0;
}

static int grow(int want)
{
    if (!atfork_done) {
        pthread_atfork(NULL, NULL, after_fork_child);
        atfork_done = 1;
    }
    while (n_workers < want) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        start_gen[n_workers + 1] = generation;
        if (pthread_create(&th, &attr, worker, (void *)(long)(n_workers + 1)) != 0) {
            pthread_attr_destroy(&attr);
            break; /* run with the workers we have */
        }
        pthread_attr_destroy(&attr);
        n_workers++;
    }
    return n_workers;
}

int fr_pool_run(int n, fr_task_fn fn, void *arg)
{
    if (n > FR_POOL_MAX) n = FR_POOL_MAX;
    if (n <= 1 || pthread_mutex_trylock(&run_lock) != 0) {
        fn(arg, 0, 1);
        return 1;
    }
    if (grow(n - 1) + 1 < n) n = n_workers + 1;
    if (n <= 1) {
        pthread_mutex_unlock(&run_lock);
        fn(arg, 0, 1);
        return 1;
    }
    job_fn = fn;
    job_arg = arg;
    job_nth = n;
    bar_count = 0;
    bar_sense = 0;
    __atomic_store_n(&job_left, n - 1, __ATOMIC_RELEASE);
    pthread_mutex_lock(&wake_lock);  /* a worker between its check and its wait cannot miss this */
    __atomic_add_fetch(&generation, 1, __ATOMIC_ACQ_REL);
    pthread_cond_broadcast(&wake_cond);
    pthread_mutex_unlock(&wake_lock);
    fn(arg, 0, n);
    {
        int spins = 0;
        while (__atomic_load_n(&job_left, __ATOMIC_ACQUIRE) != 0) relax(&spins);
    }
    pthread_mutex_unlock(&run_lock);
    return n;
}

void fr_pool_barrier(int nth, int *local_sense)
{
    int s;
    if (nth <= 1) return;
    s = !*local_sense;
    *local_sense = s;
    if (__atomic_add_fetch(&bar_count, 1, __ATOMIC_ACQ_REL) == nth) {
        __atomic_store_n(&bar_count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&bar_sense, s, __ATOMIC_RELEASE);
    } else {
        int spins = 0;
        while (__atomic_load_n(&bar_sense, __ATOMIC_ACQUIRE) != s) relax(&spins);
    }
}
