/* pool.h - fastrnn's own worker threads: run one task on n threads, with a spinning barrier inside it.
 *
 * Design
 * ------
 * DESIGN section 4: one pool at a time.  The time loops split work across threads in two ways (batch
 * rows: no synchronisation inside the loop, a parts task; hidden units: one barrier per time step, a
 * team task), and the hoisted GEMMs are parts tasks too.  OpenBLAS stays on one thread, so only this
 * pool is ever active.
 *
 * fr_pool_run(n, fn, arg) calls fn(arg, tid, nth) for tid = 0..nth-1 concurrently, tid 0 on the calling
 * thread, and returns when all have returned.  nth <= n: it is 1 when the pool is already serving another
 * call (a second Python thread), so calls stay reentrant and never wait for each other; and workers
 * must check in within a short, adaptive time (100 us, halved after each miss, and at most a quarter
 * of the task's estimated time), so a worker that the OS
 * does not run at the moment (another process's threads spinning on that core, e.g. torch's OpenMP
 * pool) is left out instead of stalling the call.  Tasks must therefore work for any nth they are
 * given; fastrnn's keep the plan's partition whatever nth is, so results do not change.
 *
 * Workers are created on first use and kept.  After a task a worker spins for FR_POOL_SPIN_NS before
 * sleeping on a condition variable, so back-to-back calls (streaming, one step per call) hand over in
 * well under a microsecond, while an idle process does not burn a core.  A team task shorter than a
 * wake-up (work_ns under FR_POOL_CHECKIN_MIN_NS) that finds every worker asleep runs on the caller at
 * once: it wakes them for the next call only when the previous call ended under FR_POOL_SPIN_NS ago,
 * so calls that far apart never pay a wake-up, and closer ones soon run as a team again.
 *
 * The barrier (one per pool: only one multi-threaded task runs at a time) is a sense-reversing counter:
 * one atomic add per thread per wait, spinning with pause.
 *
 * Stall guard: when waits past the pause phase (a team member off its core) took a quarter or more of
 * a team task's time, the next calls run on the caller alone (2 calls, doubling while it recurs, up to
 * 128), then the team is tried again (pool.c).
 *
 * Team or solo: the hidden split's calls go through fr_pool_run_adaptive, which also compares each kind
 * of call's team time with its solo time and runs it alone while one thread is faster: on a shared VM a
 * team can be slower than one thread for long phases without any member being off its core.
 */
#ifndef FASTRNN_POOL_H
#define FASTRNN_POOL_H

#define FR_POOL_MAX 64

typedef void (*fr_task_fn)(void *arg, int tid, int nth);
typedef void (*fr_part_fn)(void *arg, int part);

/* A team task: fn on up to n threads at once (n is clamped to [1, FR_POOL_MAX]), for work whose threads
 * meet at barriers.  work_ns: the caller's estimate of the task's single-thread time; the caller waits
 * for workers to check in at most a quarter of it (a streaming step does not wait 100 us for a worker
 * that has gone to sleep).  Returns the number that ran. */
int fr_pool_run(int n, fr_task_fn fn, void *arg, long work_ns);

/* fr_pool_run, or fn(arg, 0, 1) on the caller alone, whichever has been faster for this kind of task
 * (fn with this work_ns and label: a label tells apart calls of one function and estimate that differ,
 * e.g. a training forward, which also stores its gates, from an inference one).  For tasks whose team
 * pays a barrier every step (the hidden split), which on a shared VM can run slower than one thread
 * for long phases.  Per kind: the team's running average time
 * against the solo calls'; a team slower than one thread sends the next calls of its kind to the caller
 * alone (2, doubling while it recurs, up to 32; a winning team call halves the period), and every 32nd
 * call of a winning team runs alone to keep the solo time current (pool.c, "Team or solo").  Results do
 * not depend on the choice (tasks work for any nth).  Returns the number of threads that ran. */
int fr_pool_run_adaptive(int n, fr_task_fn fn, void *arg, long work_ns, int label);

/* Calls fr_pool_run_adaptive has run alone by choice so far. */
long fr_pool_adaptive_solo_calls(void);

/* on 0: fr_pool_run_adaptive runs as fr_pool_run (benchmarks compare), 1: chooses (the default), -1:
 * unchanged; returns the previous setting. */
int fr_pool_adaptive(int on);

/* A parts task: fn(arg, part) for part = 0..nparts-1, each exactly once, on up to n threads, for
 * independent parts (no barrier).  Parts are claimed one at a time: the caller starts at once and takes
 * every part no worker has come for, so a worker the OS runs late joins late or not at all, and never
 * holds the call back unless it is running a part.  Returns n, or 1 when the pool was busy. */
int fr_pool_parts(int n, int nparts, fr_part_fn fn, void *arg);

/* Inside a task: wait until all nth threads of the task have arrived (nth <= 1: returns at once, so
 * the busy-pool fallback never touches the barrier of the task that holds the pool).
 * IN nth (the task's); IN/OUT local_sense: each thread's own flag, 0 before its first wait. */
void fr_pool_barrier(int nth, int *local_sense);

/* Host runtime.  A process that also runs torch has torch's OpenMP team, whose threads spin for a while
 * after each of torch's parallel ops: on two cores this pool's worker then waits for a core at every
 * barrier, and a fastrnn.torch training step ran 1.5-3x slower than its kernels alone (bench/NOTES.md
 * 39).  So calls made from torch's bridge (fastrnn/_torch_autograd.py) run their tasks on that team
 * instead: one pool at a time again.  fr_pool_set_host registers the runtime's GOMP_parallel,
 * omp_get_thread_num and omp_get_num_threads (NULL: none); fr_pool_use_host(on) switches the calling
 * thread's later fr_pool_run / fr_pool_parts calls to it (or back) and returns the previous setting.
 * A task then runs on the team GOMP_parallel gives (its size is nth), tid 0 on the caller; the same
 * barrier, stall guard and one-task-at-a-time rule apply.  A forked child forgets the host (GNU
 * OpenMP's pool lists threads the child does not have: a child that used it hung) and runs on this
 * pool's own fresh workers. */
void fr_pool_set_host(void *gomp_parallel, void *omp_get_thread_num, void *omp_get_num_threads);
int fr_pool_use_host(int on);

/* OUT solo_calls: team calls the stall guard has run on the caller alone so far; OUT backoff_calls:
 * its current solo period in calls (0: none; a clean team task halves it); OUT asleep_calls: small
 * team calls run on the caller alone because every worker was asleep. */
void fr_pool_stats(long *solo_calls, long *backoff_calls, long *asleep_calls);

#endif
