// backend_cuda.cu: the forward pass's operations on an NVIDIA GPU (engine/model/backend.h). The
// model, its layer kinds, the session and the state blob are the engine's own C code; this file
// supplies device memory and launches the CUDA kernels on the model's stream. Weights are placed
// as f32 (quantized formats expanded: the kernels here are f32 only).
#include <cuda_runtime.h>
#include <stdlib.h>
#include <string.h>

#include <new>

extern "C" {
#include "../../engine/model/engine.h"
}
#include "../include/kle_cuda.h"
#include "../include/kle_cuda_node.h"
#include "ops.cuh"

// Tokens per forward batch: larger than the CPU's 64 so the matmuls have enough rows to keep the
// GPU busy; the result does not depend on it beyond float rounding.
#define CUDA_BATCH 512

#define CU(x)                                                                                      \
  do {                                                                                             \
    if ((x) != cudaSuccess) return KLE_EDEVICE;                                                    \
  } while (0)

struct kle_backend_ctx {
  cudaStream_t st = nullptr;
  void *ws = nullptr;  // workspace of the chunked KDA and MLA attention kernels
  long ws_bytes = 0;
  int32_t *tok = nullptr;  // a batch of token ids
};

namespace {

// the launches are asynchronous: their errors surface here, at the next sync
int launched() { return cudaPeekAtLastError() == cudaSuccess ? KLE_OK : KLE_EDEVICE; }

kle_backend_ctx *cu_open() {
  kle_backend_ctx *cx = new (std::nothrow) kle_backend_ctx;
  if (!cx) return nullptr;
  if (cudaStreamCreateWithFlags(&cx->st, cudaStreamNonBlocking) != cudaSuccess ||
      cudaMalloc(&cx->tok, sizeof(int32_t) * CUDA_BATCH) != cudaSuccess) {
    cudaGetLastError();
    if (cx->st) cudaStreamDestroy(cx->st);
    delete cx;
    return nullptr;
  }
  return cx;
}

void cu_close(kle_backend_ctx *cx) {
  cudaStreamSynchronize(cx->st);
  cudaFree(cx->ws);
  cudaFree(cx->tok);
  cudaStreamDestroy(cx->st);
  delete cx;
}

void *cu_alloc(kle_backend_ctx *cx, size_t bytes) {
  void *p = nullptr;
  if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  if (cudaMemsetAsync(p, 0, bytes, cx->st) != cudaSuccess) {
    cudaFree(p);
    return nullptr;
  }
  return p;
}

void cu_release(kle_backend_ctx *cx, void *p) {
  (void)cx;
  if (p) cudaFree(p);  // waits for the device: no kernel still reads it
}

// pageable host memory on either side: each copy waits for the stream, then for itself
int cu_upload(kle_backend_ctx *cx, void *dst, const void *src, size_t n) {
  CU(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, cx->st));
  CU(cudaStreamSynchronize(cx->st));
  return KLE_OK;
}
int cu_download(kle_backend_ctx *cx, void *dst, const void *src, size_t n) {
  CU(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, cx->st));
  CU(cudaStreamSynchronize(cx->st));
  return KLE_OK;
}
int cu_copy(kle_backend_ctx *cx, void *dst, const void *src, size_t n) {
  CU(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, cx->st));
  return KLE_OK;
}
int cu_sync(kle_backend_ctx *cx) {
  CU(cudaGetLastError());
  CU(cudaStreamSynchronize(cx->st));
  return KLE_OK;
}

// a host tensor as f32 in device memory; the host bytes are freed once copied
int cu_place(kle_backend_ctx *cx, kle_tensor *t) {
  float *tmp = kle_tensor_to_f32(t);
  if (!tmp) return KLE_ENOMEM;
  const size_t bytes = sizeof(float) * (size_t)t->rows * t->cols;
  float *d = (float *)cu_alloc(cx, bytes);
  const int rc = d ? cu_upload(cx, d, tmp, bytes) : KLE_EDEVICE;
  free(tmp);
  if (rc != KLE_OK) {
    cudaFree(d);
    return rc;
  }
  free(t->data);
  t->data = (uint8_t *)d;
  t->fmt = KLE_W_F32;
  t->bytes = (long)bytes;
  return KLE_OK;
}

// the layer's E x 3 expert pointers as a device array, for the expert matvecs
int cu_experts_table(kle_backend_ctx *cx, const kle_tensor *ex, int E, void **handle) {
  float **host = (float **)malloc(sizeof(float *) * (size_t)E * 3);
  if (!host) return KLE_ENOMEM;
  for (int i = 0; i < E * 3; i++) host[i] = (float *)ex[i].data;
  void *d = cu_alloc(cx, sizeof(float *) * (size_t)E * 3);
  const int rc = d ? cu_upload(cx, d, host, sizeof(float *) * (size_t)E * 3) : KLE_EDEVICE;
  free(host);
  if (rc != KLE_OK) {
    cudaFree(d);
    return rc;
  }
  *handle = d;
  return KLE_OK;
}
void cu_experts_table_free(kle_backend_ctx *cx, void *handle) { cu_release(cx, handle); }

int ensure_ws(kle_backend_ctx *cx, long bytes) {
  if (bytes <= cx->ws_bytes) return KLE_OK;
  cudaFree(cx->ws);  // synchronizes: no kernel still reads the old workspace
  cx->ws = nullptr;
  cx->ws_bytes = 0;
  const long want = bytes + bytes / 4;
  CU(cudaMalloc(&cx->ws, want));
  cx->ws_bytes = want;
  return KLE_OK;
}

const float *F(const kle_tensor *t) { return (const float *)t->data; }

int cu_matmul(kle_backend_ctx *cx, const kle_tensor *w, const float *X, float *Y, int T) {
  kle_ops::matmul(F(w), X, Y, T, w->rows, w->cols, cx->st);
  return launched();
}

int cu_embed(kle_backend_ctx *cx, const kle_tensor *table, const int32_t *tokens, float *x, int T) {
  CU(cudaMemcpyAsync(cx->tok, tokens, sizeof(int32_t) * T, cudaMemcpyHostToDevice, cx->st));
  kle_ops::embed(F(table), cx->tok, x, T, table->cols, cx->st);
  return launched();
}

int cu_rmsnorm(kle_backend_ctx *cx, const float *x, const float *gate, const float *w, float *y, int rows, int D, float eps) {
  kle_ops::rmsnorm(x, gate, w, y, rows, D, eps, cx->st);
  return launched();
}

int cu_add(kle_backend_ctx *cx, float *x, const float *y, size_t n) {
  kle_ops::add(x, y, (long)n, cx->st);
  return launched();
}

int cu_sigmoid(kle_backend_ctx *cx, const float *x, float *y, size_t n) {
  kle_ops::sigmoid(x, y, (long)n, cx->st);
  return launched();
}

int cu_swiglu(kle_backend_ctx *cx, const float *gate, const float *up, float *out, size_t n) {
  kle_ops::swiglu(gate, up, out, (long)n, cx->st);
  return launched();
}

int cu_conv_short(kle_backend_ctx *cx, const float *x, const float *wT, float *tail, float *y, int T, int C, int W) {
  kle_ops::conv_short(x, wT, tail, y, T, C, W, cx->st);
  return launched();
}

int cu_kda_gate(kle_backend_ctx *cx, const float *x, const float *A_log, const float *dt_bias, float *g, int T, int H, int K,
                int Kg, float lower_bound) {
  kle_ops::kda_gate(x, A_log, dt_bias, g, T, H, K, Kg, lower_bound, cx->st);
  return launched();
}

int cu_kda_recur(kle_backend_ctx *cx, float *S, const float *q, const float *k, const float *v, const float *g,
                 const float *beta, float *o, int T, int H, int K, int V, float scale) {
  if (T >= 64) {  // a whole chunk or more: the chunk form's parallel work pays for itself
    KLE_TRY(ensure_ws(cx, kle_cuda_kda_chunk_workspace_bytes(T, H, K, V)));
    return kle_cuda_kda_chunk(S, q, k, v, g, beta, o, T, H, K, V, scale, KLE_KDA_L2NORM_QK, cx->ws, cx->ws_bytes, cx->st);
  }
  return kle_cuda_kda_recurrent(S, q, k, v, g, beta, o, T, H, K, V, scale, KLE_KDA_L2NORM_QK, cx->st);
}

// The step is launched overlapped: it streams the layer's state and conv windows while the
// projection before it (the output gate's, a matvec that writes none of them) finishes.
int cu_kda_fused_step(kle_backend_ctx *cx, const kle_kda_fused_args *a) {
  if (a->Kg != a->K || (a->K != 64 && a->K != 128) || a->W < 1 || a->W > 16) return KLE_ENOSYS;
  const kle_cuda_kda_layer_args la = {a->xq, a->xk, a->xv, a->wq, a->wk, a->wv, a->tq, a->tk, a->tv,
                                      a->graw, a->A_log, a->dt_bias, a->lower_bound, a->braw, a->oraw, a->onorm,
                                      a->eps, a->S, a->o, KLE_CUDA_KDA_OVERLAP};
  return kle_cuda_kda_layer_step(&la, 1, a->H, a->K, a->V, a->W, a->scale, cx->st);
}

int cu_mla_cache_write(kle_backend_ctx *cx, const float *kv, const float *w, float *rows, int T, int R, int rope, float eps) {
  kle_ops::mla_cache_write(kv, w, rows, T, R, rope, eps, cx->st);
  return launched();
}

int cu_mla_absorb(kle_backend_ctx *cx, const float *W_uk, const float *q, float *qlat, int T, int H, int nope, int rope, int R) {
  kle_ops::mla_absorb(W_uk, q, qlat, T, H, nope, rope, R, cx->st);
  return launched();
}

// Scores of a scored batch in workspace at once: [T, H, L] floats, bounded by query groups
#define SCORED_WS_BYTES (256l << 20)

// decode and prefill alike: the tensor-core kernel where the latent widths allow; a bounded
// cache's scored attention in groups of queries whose scores fit SCORED_WS_BYTES
int cu_mla_attend(kle_backend_ctx *cx, const float *qlat, const float *cache, int L0, int T, int H, int D, int Dv, float scale,
                  float *out, float *score, float decay) {
  if (score) {
    long per_query = (long)H * (L0 + T) * 4;
    int group = (int)(SCORED_WS_BYTES / (per_query > 0 ? per_query : 1));
    group = group < 1 ? 1 : group > T ? T : group;
    for (int t0 = 0; t0 < T; t0 += group) {
      const int n = T - t0 < group ? T - t0 : group;
      const long ws = kle_cuda_mla_attend_scored_workspace_bytes(L0 + t0 + n, n, H, Dv);
      KLE_TRY(ensure_ws(cx, ws));
      KLE_TRY(kle_cuda_mla_attend_scored(qlat + (size_t)t0 * H * D, cache, L0 + t0, n, H, D, Dv, scale,
                                         out + (size_t)t0 * H * Dv, score, decay, cx->ws, cx->ws_bytes, cx->st));
    }
    return KLE_OK;
  }
  KLE_TRY(ensure_ws(cx, kle_cuda_mla_attend_workspace_bytes(L0 + T, T, H, Dv)));
  return kle_cuda_mla_attend(qlat, cache, L0, T, H, D, Dv, scale, out, cx->ws, cx->ws_bytes, cx->st);
}

// ---------------------------------------------------------------- the bounded MLA cache (kv_budget.c)
__global__ void kv_note_rows_kernel(uint32_t *info, int T, uint32_t pos0, uint32_t flag) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t < T) info[t] = (pos0 + (uint32_t)t) | flag;
}

int cu_kv_note_rows(kle_backend_ctx *cx, uint32_t *info, int T, uint32_t pos0, uint32_t flag) {
  if (T <= 0) return KLE_OK;
  kv_note_rows_kernel<<<(T + 255) / 256, 256, 0, cx->st>>>(info, T, pos0, flag);
  return launched();
}

// the drop order of kv_budget.c as one 64-bit key per row, smallest dropped first: guarded, then
// the score (finite; its bits made to sort as unsigned), then the position (unique per row)
__device__ inline unsigned long long kv_key(const float *score, const uint32_t *info, int j, uint32_t sink, long long recent) {
  const uint32_t r = info[j], p = r & 0x7fffffffu;
  const bool guarded = p < sink || (long long)p >= recent || (r & 0x80000000u);
  uint32_t b = __float_as_uint(score[j]);
  b = b & 0x80000000u ? ~b : b | 0x80000000u;
  // 1 bit guarded, the score's top 32 bits, the position's 31: a tie on score goes to the oldest
  return ((unsigned long long)guarded << 63) | ((unsigned long long)b << 31) | p;
}

// one block: the row to drop among M, then row M - 1 moves into its slot
__global__ void __launch_bounds__(1024) kv_drop_one_kernel(float *cache, int Dc, float *score, uint32_t *info, int M, uint32_t sink,
                                                            long long recent) {
  __shared__ unsigned long long best[1024];
  __shared__ int who[1024];
  unsigned long long k = ~0ull;
  int w = -1;
  for (int j = threadIdx.x; j < M; j += blockDim.x) {
    const unsigned long long kj = kv_key(score, info, j, sink, recent);
    if (kj < k) k = kj, w = j;
  }
  best[threadIdx.x] = k;
  who[threadIdx.x] = w;
  __syncthreads();
  for (int n = blockDim.x / 2; n > 0; n >>= 1) {
    if ((int)threadIdx.x < n && best[threadIdx.x + n] < best[threadIdx.x]) {
      best[threadIdx.x] = best[threadIdx.x + n];
      who[threadIdx.x] = who[threadIdx.x + n];
    }
    __syncthreads();
  }
  const int v = who[0], last = M - 1;
  if (v < 0 || v == last) return;  // the newest row itself goes: nothing moves
  for (int i = threadIdx.x; i < Dc; i += blockDim.x) cache[(size_t)v * Dc + i] = cache[(size_t)last * Dc + i];
  if (threadIdx.x == 0) {
    score[v] = score[last];
    info[v] = info[last];
  }
}

int cu_kv_drop_one(kle_backend_ctx *cx, float *cache, int Dc, float *score, uint32_t *info, int M, uint32_t sink, int64_t recent) {
  if (M <= 0 || Dc <= 0) return KLE_EINVAL;
  kv_drop_one_kernel<<<1, 1024, 0, cx->st>>>(cache, Dc, score, info, M, sink, (long long)recent);
  return launched();
}

int cu_mla_up_v(kle_backend_ctx *cx, const float *W_uv, const float *o, float *y, int T, int H, int vh, int R) {
  kle_ops::mla_up_v(W_uv, o, y, T, H, vh, R, cx->st);
  return launched();
}

int cu_moe_route(kle_backend_ctx *cx, const float *logits, const float *bias, int T, int E, int topk, int n_group,
                 int topk_group, int act, int renorm, float scale, int32_t *idx, float *w) {
  kle_ops::moe_route(logits, bias, T, E, topk, n_group, topk_group, act, renorm, scale, idx, w, cx->st);
  return launched();
}

// one expert matvec per (token, choice), then the weighted sum per token
int cu_moe_experts(kle_backend_ctx *cx, const void *experts, const int32_t *idx, const float *w, const float *h, float *y,
                   int T, int K, int D, int MI, float *scratch) {
  const int P = T * K;
  const float *const *tab = (const float *const *)experts;
  float *g = scratch, *u = g + (size_t)P * MI, *ye = u + (size_t)P * MI;
  kle_ops::expert_matvec(tab, 0, idx, h, K, g, P, MI, D, cx->st);
  kle_ops::expert_matvec(tab, 1, idx, h, K, u, P, MI, D, cx->st);
  kle_ops::swiglu(g, u, g, (long)P * MI, cx->st);
  kle_ops::expert_matvec(tab, 2, idx, g, 1, ye, P, D, MI, cx->st);
  kle_ops::moe_combine(ye, w, y, T, K, D, 0, cx->st);
  return launched();
}

// shapes the CUDA kernels run; the engine's own config checks come first
int cu_supports(const int32_t *c, const int32_t *kinds) {
  bool kda = false, mla = false;
  for (int l = 0; l < c[KLE_CFG_LAYERS]; l++) (kinds[l] == KLE_LAYER_KDA ? kda : mla) = true;
  const int dk = c[KLE_CFG_KDA_HEAD_DIM];
  if (kda && dk != 32 && dk != 64 && dk != 128) return 0;
  if (mla && (c[KLE_CFG_KV_RANK] + c[KLE_CFG_QK_ROPE] > 640 || c[KLE_CFG_KV_RANK] > 512)) return 0;
  if (c[KLE_CFG_EXPERTS] > 1024) return 0;
  return 1;
}

kle_backend make_backend() {
  kle_backend b = {};
  b.name = "cuda";
  b.host_memory = 0;
  b.batch = CUDA_BATCH;
  b.supports = cu_supports;
  b.open = cu_open;
  b.close = cu_close;
  b.alloc = cu_alloc;
  b.release = cu_release;
  b.upload = cu_upload;
  b.download = cu_download;
  b.copy = cu_copy;
  b.sync = cu_sync;
  b.place = cu_place;
  b.experts_table = cu_experts_table;
  b.experts_table_free = cu_experts_table_free;
  b.matmul = cu_matmul;
  b.embed = cu_embed;
  b.rmsnorm = cu_rmsnorm;
  b.add = cu_add;
  b.sigmoid = cu_sigmoid;
  b.swiglu = cu_swiglu;
  b.conv_short = cu_conv_short;
  b.kda_gate = cu_kda_gate;
  b.kda_recur = cu_kda_recur;
  b.kda_fused_step = cu_kda_fused_step;
  b.mla_cache_write = cu_mla_cache_write;
  b.mla_absorb = cu_mla_absorb;
  b.mla_attend = cu_mla_attend;
  b.mla_up_v = cu_mla_up_v;
  b.kv_note_rows = cu_kv_note_rows;
  b.kv_drop_one = cu_kv_drop_one;
  b.moe_route = cu_moe_route;
  b.moe_experts = cu_moe_experts;
  return b;
}

const kle_backend cuda_backend = make_backend();

}  // namespace

extern "C" const kle_backend *kle_backend_get(void) { return &cuda_backend; }

extern "C" int kle_cuda_device_info(uint8_t *name, int n) {
  int dev = 0;
  cudaDeviceProp p;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&p, dev) != cudaSuccess) {
    cudaGetLastError();
    return KLE_EDEVICE;
  }
  if (name && n > 0) {
    strncpy((char *)name, p.name, (size_t)n - 1);
    name[n - 1] = 0;
  }
  return p.major * 10 + p.minor;
}
