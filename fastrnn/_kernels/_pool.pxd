# _pool.pxd - Cython view of pool.h (fastrnn's own worker threads; see pool.h for the contracts).
cdef extern from "pool.h" nogil:
    ctypedef void (*fr_task_fn)(void *arg, int tid, int nth) noexcept nogil
    ctypedef void (*fr_part_fn)(void *arg, int part) noexcept nogil
    int fr_pool_run(int n, fr_task_fn fn, void *arg, long work_ns)
    int fr_pool_run_adaptive(int n, fr_task_fn fn, void *arg, long work_ns, int label)
    long fr_pool_adaptive_solo_calls()
    int fr_pool_adaptive(int on)
    int fr_pool_parts(int n, int nparts, fr_part_fn fn, void *arg)
    void fr_pool_barrier(int nth, int *local_sense)
    void fr_pool_stats(long *solo_calls, long *backoff_calls, long *asleep_calls)
    void fr_pool_set_host(void *gomp_parallel, void *omp_get_thread_num, void *omp_get_num_threads)
    int fr_pool_use_host(int on)
