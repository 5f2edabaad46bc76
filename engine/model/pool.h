/*
 * pool.h: the CPU backend's worker threads (not public). One pool per model, in its backend
 * context. Native builds start their own threads; the wasm threads build (atomics, shared memory)
 * has the host start them (Web Workers, Node's worker_threads: kle_model_thread_pool); the plain
 * wasm builds have none, and every call runs on the caller (a Worker isolate has one thread).
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
/* the cores this process may use (1 where unknown, and in wasm, where the host decides) */
int kle_pool_cores(void);
/* threads the host must start for the pool now (reserved: each then calls kle_pool_serve once);
 * 0 where the pool starts its own */
int kle_pool_host_starts(kle_pool *p);
/* the body of a thread the host started: runs the pool's jobs until the pool is freed */
int kle_pool_serve(kle_pool *p);
/* host-started threads serving now (0 for none, and for native pools) */
int kle_pool_serving(kle_pool *p);

#endif
