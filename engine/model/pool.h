/*
 * pool.h: the native CPU backend's worker threads (not public). One pool per model, in its
 * backend context; none in wasm builds (a Worker isolate has one thread), where every call runs
 * on the caller.
 */
#ifndef KLE_POOL_H
#define KLE_POOL_H

typedef struct kle_pool kle_pool;

/* threads in all, the caller included; NULL (run on the caller) for 1 or where there are none */
kle_pool *kle_pool_create(int threads);
void kle_pool_free(kle_pool *p);
int kle_pool_threads(const kle_pool *p);
/* fn(arg, i) for every i < n on the pool's threads and the caller, back once all have run */
void kle_pool_run(kle_pool *p, void (*fn)(void *arg, int i), void *arg, int n);
/* the cores this process may use (1 where unknown) */
int kle_pool_cores(void);

#endif
