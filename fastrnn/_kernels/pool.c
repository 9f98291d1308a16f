/* pool.c - the worker threads behind fr_pool_run and the spinning barrier (design: pool.h). */
#include <pthread.h>
#include <sched.h>
#include <string.h>
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

/* Stall guard for team tasks.  A wait in a team task that outlasts the pause phase (tens of
 * microseconds) means a thread of the team was not running: another process, or another runtime's
 * spinning pool in this process (onnxruntime's, torch's OpenMP), has its core.  A team then runs at
 * the speed of its slowest member's time slices, often slower than one thread alone.  When such waits
 * (at barriers and the final join, summed over the team) took a quarter or more of a team task's
 * time, fr_pool_run runs the next calls on the caller alone (2 calls, doubling on each stalled task
 * up to 128; a clean team task halves the period), then tries the team again: a retry under lasting
 * contention costs at most one slow call in 128.  Counted in calls, not time, so long and short calls
 * (a whole sequence, a streaming step) retry at the same rate.  Results do not change: a task keeps
 * the plan's partition whatever nth it gets. */
#define FR_STALL_BACKOFF_MIN 2
#define FR_STALL_BACKOFF_MAX 128
static volatile long stall_ns;     /* time the current team task's threads waited past the pause phase */
static long backoff;               /* the current solo period in calls (0: none) */
static long solo_left;             /* calls fr_pool_run still runs alone */
static long n_solo_calls;          /* calls the guard ran alone (fr_pool_stats) */
static long n_asleep_calls;        /* small calls run alone because every worker slept (fr_pool_stats) */

static long now_ns(void);

/* Team or solo (fr_pool_run_adaptive, pool.h).  Per kind of task (its function, the caller's estimate
 * work_ns, which a shape fixes, and the caller's label), the time of its team calls (a running average)
 * and of its solo calls; a team that took longer than one thread makes the next calls of that kind run
 * alone (2, doubling while it recurs, up to 32; a team call that wins halves the period), and after every
 * FR_ADAPT_PROBE_EVERY team calls one call runs alone to keep the solo time current.  Why: on a shared
 * VM there are long phases where two threads run the hidden split 1.5-2x slower than one, with no
 * member off its core for long (that is the stall guard's case; this is the host's doing):
 * gru T300 B1 H64, batches of 300 calls, 2 threads 297-307 then 528-529 us, 1 thread 235-326
 * (bench/NOTES.md 46).  Cost where the team wins: one call in FR_ADAPT_PROBE_EVERY + 1 at the solo speed. */
#define FR_ADAPT_SLOTS 8
#define FR_ADAPT_PROBE_EVERY 32
#define FR_ADAPT_BACKOFF_MIN 2
#define FR_ADAPT_BACKOFF_MAX 32
struct adapt_slot {
    fr_task_fn fn;           /* the kind: the task's function, its estimate and the caller's label */
    long work_ns;            /* (0 fn: a free slot) */
    int label;
    long team_ns, solo_ns;   /* its team calls' running average, its solo calls' (0: none yet) */
    int team_calls;          /* team calls since its last solo one */
    int solo_left, backoff;  /* calls still to run alone; the current solo period */
    int fresh;               /* the next team call starts the average afresh (after a solo period) */
    unsigned long used;      /* when last used (the least recently used slot is reused) */
};
static struct adapt_slot adapt[FR_ADAPT_SLOTS];
static unsigned long adapt_clock;
static long n_adapt_solo_calls;    /* calls fr_pool_run_adaptive ran alone by choice */
static pthread_mutex_t adapt_lock = PTHREAD_MUTEX_INITIALIZER;

/* relax(), timing the part of the wait past the pause phase: *since is 0 until the wait gets there */
static inline void relax_timed(int *spins, long *since)
{
    if (*spins == FR_SPIN_YIELD) *since = now_ns();
    relax(spins);
}

static inline void add_stall(long since)
{
    if (since) __atomic_add_fetch(&stall_ns, now_ns() - since, __ATOMIC_RELAXED);
}

#define FR_POOL_SPIN_NS 1000000L       /* 1 ms of idle spinning: covers the Python between two steps (NOTES 29) */
#define FR_POOL_CHECKIN_NS 100000L     /* covers a worker's wake-up from its condition variable */
#define FR_POOL_CHECKIN_MIN_NS 20000L  /* the floor of that wait after repeated misses */
#define FR_POOL_CHECKIN_FLOOR_NS 2000L  /* a spinning worker checks in well within this */

static pthread_mutex_t run_lock = PTHREAD_MUTEX_INITIALIZER;   /* one fr_pool_run at a time */
static pthread_mutex_t wake_lock = PTHREAD_MUTEX_INITIALIZER;  /* guards sleeping workers */
static pthread_cond_t wake_cond = PTHREAD_COND_INITIALIZER;

static int n_workers;              /* created so far (tids 1..n_workers) */
static long start_gen[FR_POOL_MAX]; /* the generation a worker was created in: it waits for the next */
static int atfork_done;
static volatile long generation;   /* bumped for every task; workers wait for a change */
static volatile long reg;          /* check-in word of the current task: gen << 8 | closed << 7 | count */
static volatile long go;           /* the generation whose participants may start (job_nth is final) */
static volatile int job_want;      /* threads the caller asked for */
static volatile int job_nth;       /* threads in the current task: the caller and the workers checked in */
static fr_task_fn volatile job_fn;
static void *volatile job_arg;
static volatile int job_left;      /* workers still running the current task */
static volatile int bar_count;     /* the task's barrier: arrivals this round */
static volatile int bar_sense;     /* flips when a round completes; every thread's sense starts at 0 */
static long checkin_ns = FR_POOL_CHECKIN_NS; /* how long the caller waits for workers (adaptive) */
static volatile int job_parts;     /* > 0: a parts task (fr_pool_parts) of this many parts; 0: a team task */
static fr_part_fn volatile part_fn;
static volatile long part_word;    /* gen << 16 | the next unclaimed part */
static volatile int parts_done;
static volatile int n_asleep;      /* workers in (or entering) their condition wait, under wake_lock */
static long last_end_ns;           /* when the last fr_pool_run's task ended (under run_lock) */

/* Claim and run parts of the parts task of generation gen until none is left; returns when it is. */
static void run_parts(long gen)
{
    long r = __atomic_load_n(&part_word, __ATOMIC_ACQUIRE);
    while ((r >> 16) == gen && (r & 0xffff) < job_parts) {
        if (__atomic_compare_exchange_n(&part_word, &r, r + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            /* the caller cannot return before this part is done, so job_arg is still its task's */
            part_fn(job_arg, (int)(r & 0xffff));
            __atomic_add_fetch(&parts_done, 1, __ATOMIC_ACQ_REL);
            r = __atomic_load_n(&part_word, __ATOMIC_ACQUIRE);
        }
    }
}

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
            /* pause, never yield, here: nobody waits for an idle worker, and a streaming caller wants
             * it to check in within a microsecond */
            FR_PAUSE();
            if (++spins % 256 == 0 && now_ns() - start > FR_POOL_SPIN_NS) {
                pthread_mutex_lock(&wake_lock);
                n_asleep++;
                while ((gen = __atomic_load_n(&generation, __ATOMIC_ACQUIRE)) == seen)
                    pthread_cond_wait(&wake_cond, &wake_lock);
                n_asleep--;
                pthread_mutex_unlock(&wake_lock);
                break;
            }
        }
        seen = gen;
        if (job_parts > 0) {   /* a parts task: take parts while there are any (none if it is over) */
            if (tid < job_want) run_parts(gen);
            continue;
        }
        /* a team task: check in, taking the next tid, unless it is full, closed or already over */
        {
            int mytid = 0;
            long r = __atomic_load_n(&reg, __ATOMIC_ACQUIRE);
            while ((r >> 8) == gen && !(r & 128) && (r & 127) < job_want - 1) {
                if (__atomic_compare_exchange_n(&reg, &r, r + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                    mytid = (int)(r & 127) + 1;
                    break;
                }
            }
            if (mytid) {
                int spins2 = 0, nth = job_want;
                /* the last to check in completes the task's team: it knows nth and starts at once;
                 * the others wait for the caller to say how many came */
                if (mytid != nth - 1) {
                    while (__atomic_load_n(&go, __ATOMIC_ACQUIRE) != gen) relax(&spins2);
                    nth = job_nth;
                }
                job_fn(job_arg, mytid, nth);
                __atomic_sub_fetch(&job_left, 1, __ATOMIC_ACQ_REL);
            }
        }
    }
    return NULL;
}

/* the host runtime (pool.h; its functions below fr_pool_set_host) */
typedef void (*fr_gomp_parallel_fn)(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags);
static fr_gomp_parallel_fn host_parallel;
static int (*host_thread_num)(void);
static int (*host_num_threads)(void);
static __thread int host_on;   /* this thread's calls use the host runtime (fr_pool_use_host) */

/* A forked child has none of the parent's threads: start from zero workers there. */
static void after_fork_child(void)
{
    pthread_mutex_init(&run_lock, NULL);
    pthread_mutex_init(&adapt_lock, NULL);
    pthread_mutex_init(&wake_lock, NULL);
    pthread_cond_init(&wake_cond, NULL);
    n_workers = 0;
    n_asleep = 0;   /* the parent's sleeping workers are not in this process */
    solo_left = backoff = 0;
    /* nor the host runtime's team: a forked child's GNU OpenMP may wait forever for threads that its
     * pool lists but that were not copied, so a child runs on this pool's own (fresh) workers */
    host_parallel = NULL;
}

static void ensure_atfork(void)
{
    if (!atfork_done) {
        pthread_atfork(NULL, NULL, after_fork_child);
        atfork_done = 1;
    }
}

static int grow(int want)
{
    ensure_atfork();
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

/* ---------------------------------------------------------------------------------------------------
 * Host runtime (pool.h): tasks run on the team of another OpenMP runtime in this process, through its
 * GOMP_parallel entry point (libgomp's ABI; LLVM's and Intel's runtimes export it too).
 * ------------------------------------------------------------------------------------------------ */

void fr_pool_set_host(void *gomp_parallel, void *omp_get_thread_num, void *omp_get_num_threads)
{
    pthread_mutex_lock(&run_lock);   /* not while a task runs */
    ensure_atfork();                 /* a forked child forgets the host (after_fork_child) */
    host_thread_num = (int (*)(void))omp_get_thread_num;
    host_num_threads = (int (*)(void))omp_get_num_threads;
    host_parallel = gomp_parallel && omp_get_thread_num && omp_get_num_threads ? (fr_gomp_parallel_fn)gomp_parallel
                                                                             : NULL;
    pthread_mutex_unlock(&run_lock);
}

int fr_pool_use_host(int on)
{
    int before = host_on;
    host_on = on;
    return before;
}

static inline int use_host(void) { return host_on && host_parallel != NULL; }

struct host_task { fr_task_fn fn; void *arg; fr_part_fn part_fn; int nparts; int next_part; };

/* Every thread of the host's team: a team task's fn with the team's (tid, nth), or a parts task's
 * claim loop (the first thread to get there takes the first part, as in run_parts). */
static void host_entry(void *p)
{
    struct host_task *t = (struct host_task *)p;
    if (t->part_fn) {
        int part;
        while ((part = __atomic_fetch_add(&t->next_part, 1, __ATOMIC_ACQ_REL)) < t->nparts) t->part_fn(t->arg, part);
        return;
    }
    t->fn(t->arg, host_thread_num(), host_num_threads());
}

/* The stall guard's bookkeeping after a team task of nth threads that began at t_start (run_lock held). */
static void guard_after_team(int nth, long t_start)
{
    if (nth <= 1) return;
    if (4 * __atomic_load_n(&stall_ns, __ATOMIC_ACQUIRE) >= now_ns() - t_start) {
        backoff = backoff ? 2 * backoff : FR_STALL_BACKOFF_MIN;
        if (backoff > FR_STALL_BACKOFF_MAX) backoff = FR_STALL_BACKOFF_MAX;
        solo_left = backoff;
    } else {
        backoff /= 2;
    }
}

int fr_pool_run(int n, fr_task_fn fn, void *arg, long work_ns)
{
    long wait_ns, t_start, join_since = 0;
    if (n > FR_POOL_MAX) n = FR_POOL_MAX;
    if (n <= 1 || pthread_mutex_trylock(&run_lock) != 0) {
        fn(arg, 0, 1);
        return 1;
    }
    if (solo_left > 0) {   /* the stall guard's solo period */
        solo_left--;
        n_solo_calls++;
        pthread_mutex_unlock(&run_lock);
        fn(arg, 0, 1);
        return 1;
    }
    if (use_host()) {   /* the host's team: its threads are the ones idle while this call runs */
        struct host_task t = {fn, arg, NULL, 0, 0};
        stall_ns = 0;
        bar_count = 0;
        bar_sense = 0;
        t_start = now_ns();
        host_parallel(host_entry, &t, (unsigned)n, 0);
        guard_after_team(n, t_start);
        last_end_ns = now_ns();
        pthread_mutex_unlock(&run_lock);
        return n;
    }
    if (grow(n - 1) + 1 < n) n = n_workers + 1;
    if (n <= 1) {
        pthread_mutex_unlock(&run_lock);
        fn(arg, 0, 1);
        return 1;
    }
    if (work_ns < FR_POOL_CHECKIN_MIN_NS && __atomic_load_n(&n_asleep, __ATOMIC_ACQUIRE) >= n_workers) {
        /* A task shorter than a wake-up (a streaming step at H = 128) and every worker asleep: the
         * caller runs it alone, now.  It wakes them (with a generation that takes nobody, so they
         * spin for the next call) only when the previous call ended less than a worker's spin ago:
         * calls that close together run as a team again from the next one or two, and calls further
         * apart, which would find the workers asleep again, do not pay the wake-up (a cross-core
         * interrupt, several microseconds on a VM) at every call.  Steps 0.3-1 ms apart, LSTM H=128,
         * B=1, 2 threads: 19-33 -> 7-14 us (bench/NOTES.md 29). */
        if (now_ns() - last_end_ns < FR_POOL_SPIN_NS) {
            long g = generation + 1;
            __atomic_store_n(&reg, g << 8 | 128, __ATOMIC_RELEASE);
            pthread_mutex_lock(&wake_lock);
            __atomic_store_n(&generation, g, __ATOMIC_RELEASE);
            pthread_cond_broadcast(&wake_cond);
            pthread_mutex_unlock(&wake_lock);
        }
        n_asleep_calls++;
        fn(arg, 0, 1);   /* holding the pool: a concurrent caller runs alone anyway */
        last_end_ns = now_ns();
        pthread_mutex_unlock(&run_lock);
        return 1;
    }
    stall_ns = 0;
    t_start = now_ns();
    job_fn = fn;
    job_arg = arg;
    job_want = n;
    job_parts = 0;
    bar_count = 0;
    bar_sense = 0;
    /* every potential worker counted now: one that checks in last may start, and finish, before the
     * caller has seen it check in; the ones that never come are taken off at the close */
    __atomic_store_n(&job_left, n - 1, __ATOMIC_RELEASE);
    {
        long g = generation + 1, r, start;
        int spins = 0, count;
        __atomic_store_n(&reg, g << 8, __ATOMIC_RELEASE);   /* open, nobody in: before workers see g */
        pthread_mutex_lock(&wake_lock);  /* a worker between its check and its wait cannot miss this */
        __atomic_store_n(&generation, g, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&wake_cond);
        pthread_mutex_unlock(&wake_lock);
        /* wait for the workers to check in, but not for one the OS does not run now (another process's
         * spinning threads, e.g. torch's OpenMP pool): after checkin_ns close the task to latecomers
         * and run with those that came.  The plan's partition does not change, so neither do results. */
        /* never wait for helpers longer than a quarter of the work they would share */
        wait_ns = work_ns / 4 < checkin_ns ? work_ns / 4 : checkin_ns;
        if (wait_ns < FR_POOL_CHECKIN_FLOOR_NS) wait_ns = FR_POOL_CHECKIN_FLOOR_NS;
        start = now_ns();
        for (;;) {
            r = __atomic_load_n(&reg, __ATOMIC_ACQUIRE);
            if ((r & 127) == n - 1) break;
            if (++spins % 64 == 0 && now_ns() - start > wait_ns) {
                if (__atomic_compare_exchange_n(&reg, &r, r | 128, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) break;
                continue;
            }
            FR_PAUSE();
        }
        r = __atomic_load_n(&reg, __ATOMIC_ACQUIRE);
        count = (int)(r & 127);
        /* a worker that missed its turn was asleep or descheduled: wait less next time, and the full
         * time again once they all come */
        if (count == n - 1) checkin_ns = FR_POOL_CHECKIN_NS;
        else if (checkin_ns > FR_POOL_CHECKIN_MIN_NS) checkin_ns /= 2;
        if (count < n - 1) __atomic_sub_fetch(&job_left, n - 1 - count, __ATOMIC_ACQ_REL);
        n = count + 1;
        job_nth = n;
        __atomic_store_n(&go, g, __ATOMIC_RELEASE);
    }
    fn(arg, 0, n);
    {
        int spins = 0;
        while (__atomic_load_n(&job_left, __ATOMIC_ACQUIRE) != 0) relax_timed(&spins, &join_since);
        add_stall(join_since);
    }
    guard_after_team(n, t_start);   /* every worker has returned: stall_ns is final */
    last_end_ns = now_ns();
    pthread_mutex_unlock(&run_lock);
    return n;
}

/* Under adapt_lock: the slot of (fn, work_ns, label), a fresh one (the least recently used) if it has
 * none. */
static struct adapt_slot *adapt_find(fr_task_fn fn, long work_ns, int label)
{
    struct adapt_slot *a, *oldest = &adapt[0];
    int i;
    for (i = 0; i < FR_ADAPT_SLOTS; i++) {
        a = &adapt[i];
        if (a->fn == fn && a->work_ns == work_ns && a->label == label) {
            a->used = ++adapt_clock;
            return a;
        }
        if (a->used < oldest->used) oldest = a;
    }
    memset(oldest, 0, sizeof *oldest);
    oldest->fn = fn;
    oldest->work_ns = work_ns;
    oldest->label = label;
    oldest->used = ++adapt_clock;
    return oldest;
}

static int adapt_on = 1;   /* fr_pool_adaptive(0): fr_pool_run_adaptive is fr_pool_run (A/B runs) */

int fr_pool_adaptive(int on)
{
    int before = adapt_on;
    if (on >= 0) adapt_on = on != 0;
    return before;
}

int fr_pool_run_adaptive(int n, fr_task_fn fn, void *arg, long work_ns, int label)
{
    struct adapt_slot *a;
    int solo, ran;
    long t0, el;
    if (!adapt_on) return fr_pool_run(n, fn, arg, work_ns);
    if (n <= 1) {
        fn(arg, 0, 1);
        return 1;
    }
    pthread_mutex_lock(&adapt_lock);
    a = adapt_find(fn, work_ns, label);
    solo = a->solo_left > 0 || a->team_calls >= FR_ADAPT_PROBE_EVERY;
    if (solo) {
        if (a->solo_left > 0) a->solo_left--;
        a->team_calls = 0;
        n_adapt_solo_calls++;
    }
    pthread_mutex_unlock(&adapt_lock);
    t0 = now_ns();
    if (solo) {
        fn(arg, 0, 1);
        ran = 1;
    } else {
        ran = fr_pool_run(n, fn, arg, work_ns);
    }
    el = now_ns() - t0;
    pthread_mutex_lock(&adapt_lock);
    a = adapt_find(fn, work_ns, label);   /* (a concurrent caller may have reused the slot meanwhile) */
    if (ran <= 1) {   /* alone: by choice, or fr_pool_run's (busy pool, stall guard, no worker came) */
        a->solo_ns = a->solo_ns > 0 ? (a->solo_ns + el) / 2 : el;
    } else {
        a->team_ns = a->team_ns > 0 && !a->fresh ? (3 * a->team_ns + el) / 4 : el;
        a->fresh = 0;
        a->team_calls++;
        if (a->solo_ns > 0 && a->team_ns > a->solo_ns) {   /* the team lost to one thread */
            a->backoff = a->backoff ? 2 * a->backoff : FR_ADAPT_BACKOFF_MIN;
            if (a->backoff > FR_ADAPT_BACKOFF_MAX) a->backoff = FR_ADAPT_BACKOFF_MAX;
            a->solo_left = a->backoff;
            a->fresh = 1;
        } else {
            a->backoff /= 2;
        }
    }
    pthread_mutex_unlock(&adapt_lock);
    return ran;
}

long fr_pool_adaptive_solo_calls(void)
{
    long n;
    pthread_mutex_lock(&adapt_lock);
    n = n_adapt_solo_calls;
    pthread_mutex_unlock(&adapt_lock);
    return n;
}

void fr_pool_stats(long *solo_calls, long *backoff_calls, long *asleep_calls)
{
    *solo_calls = n_solo_calls;
    *asleep_calls = n_asleep_calls;
    *backoff_calls = backoff;
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
        long since = 0;
        while (__atomic_load_n(&bar_sense, __ATOMIC_ACQUIRE) != s) relax_timed(&spins, &since);
        add_stall(since);
    }
}

int fr_pool_parts(int n, int nparts, fr_part_fn fn, void *arg)
{
    int p;
    long g;
    if (n > FR_POOL_MAX) n = FR_POOL_MAX;
    if (nparts > 0xffff) nparts = 0xffff; /* callers' plans stay far below */
    if (n <= 1 || nparts <= 1 || pthread_mutex_trylock(&run_lock) != 0) {
        for (p = 0; p < nparts; p++) fn(arg, p);
        return 1;
    }
    if (use_host()) {
        struct host_task t = {NULL, arg, fn, nparts, 0};
        host_parallel(host_entry, &t, (unsigned)n, 0);
        pthread_mutex_unlock(&run_lock);
        return n;
    }
    if (grow(n - 1) + 1 < n) n = n_workers + 1;
    job_arg = arg;
    part_fn = fn;
    job_want = n;
    job_parts = nparts;
    __atomic_store_n(&parts_done, 0, __ATOMIC_RELEASE);
    g = generation + 1;
    __atomic_store_n(&part_word, g << 16, __ATOMIC_RELEASE);  /* before any worker can see g */
    pthread_mutex_lock(&wake_lock);
    __atomic_store_n(&generation, g, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&wake_cond);
    pthread_mutex_unlock(&wake_lock);
    run_parts(g);   /* the caller works too, and takes every part no worker came for */
    {
        int spins = 0;
        while (__atomic_load_n(&parts_done, __ATOMIC_ACQUIRE) != nparts) relax(&spins);
    }
    pthread_mutex_unlock(&run_lock);
    return n;
}
