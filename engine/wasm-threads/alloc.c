/*
 * alloc.c: the allocator of the wasm threads build (wasm/dist/kle-simd-mt.wasm). Emscripten's
 * malloc is thread-safe only in its pthreads builds, which STANDALONE_WASM modules cannot be, and
 * kernels that run on several threads allocate their scratch; so that build compiles the engine
 * with malloc, calloc, realloc and free renamed to these, which hold one spinlock around the
 * library's (held for a few hundred nanoseconds; threads allocate once per head or slice). The host
 * allocates through them too (exported as kle_mt_malloc, kle_mt_free): a thread may free its pool
 * while the host allocates.
 */
#include <stdatomic.h>
#include <stdlib.h>

static atomic_flag lock = ATOMIC_FLAG_INIT;

static void take(void) {
  while (atomic_flag_test_and_set_explicit(&lock, memory_order_acquire)) {
  }
}
static void give(void) { atomic_flag_clear_explicit(&lock, memory_order_release); }

void *kle_mt_malloc(size_t n) {
  take();
  void *p = malloc(n);
  give();
  return p;
}
void *kle_mt_calloc(size_t n, size_t size) {
  take();
  void *p = calloc(n, size);
  give();
  return p;
}
void *kle_mt_realloc(void *q, size_t n) {
  take();
  void *p = realloc(q, n);
  give();
  return p;
}
void kle_mt_free(void *p) {
  take();
  free(p);
  give();
}
