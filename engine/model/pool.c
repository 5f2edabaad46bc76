/*
 * pool.c: a fixed set of worker threads that run the items of one job at a time.
 *
 * A job is n items; every thread (the caller too) takes the next item from an atomic counter
 * until none are left, so uneven items balance themselves. Between jobs workers spin briefly,
 * then sleep on a condition variable (see SPIN).
 */
#include "pool.h"

#include <stdlib.h>

#include "../include/kle.h"

#if defined(__wasm_atomics__)
/*
 * wasm threads: every thread is an instance of the module on one shared memory, started by the
 * host, which asks kle_pool_host_starts how many to start; each enters kle_pool_serve. Workers
 * spin, then wait on the generation (memory.atomic.wait32); the caller never waits (a browser's
 * main thread may not), it spins. The pool is reference counted, so that a thread the host starts
 * late, or one still leaving, never touches freed memory: the owner, every reserved start and
 * every joined thread hold a reference, and the last one out frees it.
 */
#include <stdatomic.h>

/* Spin iterations (an atomic load each, about a millisecond in all) before a worker waits: a
 * wake-up through memory.atomic.notify costs more than a small model's matmul, and the host's own
 * work between decode steps (sampling, tokenizing) leaves gaps of a fraction of a millisecond.
 * Measured on 2 threads (Node, 2-vCPU host): 1M model tg 6,550 tokens/s with 20,000, 7,204 with
 * 200,000, 7,246 with 1,000,000; 105M Q8_0 298, 308, 332. */
#define SPIN 1000000

struct kle_pool {
  int want;            /* threads in all, the caller included */
  atomic_flag lock;    /* orders joins against the start of a job */
  atomic_int refs, pending, joined, stop;
  void (*fn)(void *, int);
  void *arg;
  int n;
  atomic_int generation, next, busy;
};

static void lock(kle_pool *p) {
  while (atomic_flag_test_and_set_explicit(&p->lock, memory_order_acquire)) {
  }
}
static void unlock(kle_pool *p) { atomic_flag_clear_explicit(&p->lock, memory_order_release); }

static void unref(kle_pool *p) {
  if (atomic_fetch_sub(&p->refs, 1) == 1) free(p);
}

static void drain(kle_pool *p) {
  for (int i; (i = atomic_fetch_add(&p->next, 1)) < p->n;) p->fn(p->arg, i);
}

kle_pool *kle_pool_create(int threads) {
  if (threads <= 1) return NULL;
  kle_pool *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->want = threads;
  atomic_flag_clear(&p->lock);
  atomic_init(&p->refs, 1);
  return p;
}

void kle_pool_free(kle_pool *p) {
  if (!p) return;
  lock(p);
  atomic_store(&p->stop, 1);
  atomic_fetch_add(&p->generation, 1);
  unlock(p);
  __builtin_wasm_memory_atomic_notify((int *)&p->generation, 0xffffffffu);
  unref(p);
}

int kle_pool_threads(const kle_pool *p) { return p ? p->want : 1; }

int kle_pool_host_starts(kle_pool *p) {
  if (!p) return 0;
  lock(p);
  int k = p->want - 1 - atomic_load(&p->joined) - atomic_load(&p->pending);
  if (k < 0 || atomic_load(&p->stop)) k = 0;
  atomic_fetch_add(&p->pending, k);
  atomic_fetch_add(&p->refs, k);
  unlock(p);
  return k;
}

int kle_pool_serve(kle_pool *p) {
  if (!p) return KLE_EINVAL;
  lock(p);
  atomic_fetch_sub(&p->pending, 1);
  if (atomic_load(&p->stop) || atomic_load(&p->joined) >= p->want - 1) {
    unlock(p);
    unref(p);
    return KLE_EINVAL;
  }
  /* joined under the lock: either counted in the next job's busy, or after its start */
  int seen = atomic_load(&p->generation);
  atomic_fetch_add(&p->joined, 1);
  unlock(p);
  for (;;) {
    for (int k = 0; atomic_load_explicit(&p->generation, memory_order_acquire) == seen && k < SPIN; k++) {
    }
    while (atomic_load_explicit(&p->generation, memory_order_acquire) == seen)
      __builtin_wasm_memory_atomic_wait32((int *)&p->generation, seen, -1);
    seen = atomic_load_explicit(&p->generation, memory_order_acquire);
    if (atomic_load(&p->stop)) break;
    drain(p);
    atomic_fetch_sub_explicit(&p->busy, 1, memory_order_release);
  }
  atomic_fetch_sub(&p->joined, 1);
  unref(p);
  return KLE_OK;
}

void kle_pool_run(kle_pool *p, void (*fn)(void *arg, int i), void *arg, int n) {
  if (!p || n <= 1 || atomic_load(&p->joined) == 0) {
    for (int i = 0; i < n; i++) fn(arg, i);
    return;
  }
  lock(p);
  p->fn = fn;
  p->arg = arg;
  p->n = n;
  atomic_store(&p->next, 0);
  atomic_store(&p->busy, atomic_load(&p->joined));
  atomic_fetch_add(&p->generation, 1);
  unlock(p);
  __builtin_wasm_memory_atomic_notify((int *)&p->generation, 0xffffffffu);
  drain(p);
  /* every joined thread acknowledges the job before the next can start: none still reads this one */
  while (atomic_load_explicit(&p->busy, memory_order_acquire) > 0) {
  }
}

int kle_pool_cores(void) { return 1; }

int kle_pool_serving(kle_pool *p) { return p ? atomic_load(&p->joined) : 0; }

#elif defined(__EMSCRIPTEN__) || defined(KLE_NO_THREADS)

kle_pool *kle_pool_create(int threads) {
  (void)threads;
  return NULL;
}
void kle_pool_free(kle_pool *p) { (void)p; }
int kle_pool_threads(const kle_pool *p) {
  (void)p;
  return 1;
}
void kle_pool_run(kle_pool *p, void (*fn)(void *arg, int i), void *arg, int n) {
  (void)p;
  for (int i = 0; i < n; i++) fn(arg, i);
}
int kle_pool_cores(void) { return 1; }

#else

#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

/* Spin iterations (each a pause) before a worker sleeps: about 50-100 us. A decode step's
 * matmuls come a few microseconds apart; a futex wake-up per matmul cost more than the split
 * saved (a 105M Q8_0 model decoded 320 tokens/s on one thread and 188 on two with sleeping
 * workers). Beyond it the threads sleep, so an idle server does not burn its cores. */
#define SPIN 20000

static inline void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

struct kle_pool {
  int threads; /* the caller included */
  pthread_t *tid;
  pthread_mutex_t mu;
  pthread_cond_t wake;
  int stop;
  /* the job: fn, arg and n are written before generation moves on (release), read after a
   * worker sees it move (acquire) */
  void (*fn)(void *, int);
  void *arg;
  int n;
  atomic_ulong generation;
  atomic_int next, busy;
};

static void drain(kle_pool *p) {
  for (int i; (i = atomic_fetch_add(&p->next, 1)) < p->n;) p->fn(p->arg, i);
}

static void *worker(void *v) {
  kle_pool *p = v;
  unsigned long seen = 0;
  for (;;) {
    int k = 0;
    while (atomic_load_explicit(&p->generation, memory_order_acquire) == seen && k < SPIN) relax(), k++;
    if (atomic_load_explicit(&p->generation, memory_order_acquire) == seen) {
      pthread_mutex_lock(&p->mu);
      while (!p->stop && atomic_load_explicit(&p->generation, memory_order_acquire) == seen) pthread_cond_wait(&p->wake, &p->mu);
      const int stop = p->stop;
      pthread_mutex_unlock(&p->mu);
      if (stop) return NULL;
    }
    seen = atomic_load_explicit(&p->generation, memory_order_acquire);
    drain(p);
    atomic_fetch_sub_explicit(&p->busy, 1, memory_order_release);
  }
}

kle_pool *kle_pool_create(int threads) {
  if (threads <= 1) return NULL;
  kle_pool *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->tid = calloc((size_t)threads - 1, sizeof(pthread_t));
  if (!p->tid || pthread_mutex_init(&p->mu, NULL) || pthread_cond_init(&p->wake, NULL)) {
    free(p->tid);
    free(p);
    return NULL;
  }
  atomic_init(&p->generation, 0);
  atomic_init(&p->next, 0);
  atomic_init(&p->busy, 0);
  p->threads = 1;
  for (int i = 0; i < threads - 1; i++) {
    if (pthread_create(&p->tid[i], NULL, worker, p)) break; /* fewer threads than asked: still a pool */
    p->threads++;
  }
  if (p->threads == 1) {
    kle_pool_free(p);
    return NULL;
  }
  return p;
}

void kle_pool_free(kle_pool *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  p->stop = 1;
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < p->threads - 1; i++) pthread_join(p->tid[i], NULL);
  pthread_cond_destroy(&p->wake);
  pthread_mutex_destroy(&p->mu);
  free(p->tid);
  free(p);
}

int kle_pool_threads(const kle_pool *p) { return p ? p->threads : 1; }

void kle_pool_run(kle_pool *p, void (*fn)(void *arg, int i), void *arg, int n) {
  if (!p || n <= 1) {
    for (int i = 0; i < n; i++) fn(arg, i);
    return;
  }
  p->fn = fn;
  p->arg = arg;
  p->n = n;
  atomic_store_explicit(&p->next, 0, memory_order_relaxed);
  atomic_store_explicit(&p->busy, p->threads - 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
  /* workers past their spin sleep: wake them (cheap when none waits) */
  pthread_mutex_lock(&p->mu);
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);
  drain(p);
  /* every worker acknowledges the job before the next can start: none still reads this one */
  while (atomic_load_explicit(&p->busy, memory_order_acquire) > 0) relax();
}

int kle_pool_cores(void) {
  const long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (n > 256 ? 256 : (int)n) : 1;
}

#endif

#if !defined(__wasm_atomics__)
/* pools that start their own threads (native), or have none: the host starts none */
int kle_pool_host_starts(kle_pool *p) {
  (void)p;
  return 0;
}
int kle_pool_serve(kle_pool *p) {
  (void)p;
  return KLE_EINVAL;
}
int kle_pool_serving(kle_pool *p) {
  (void)p;
  return 0;
}
#endif
