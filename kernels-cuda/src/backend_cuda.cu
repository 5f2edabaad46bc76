// backend_cuda.cu: the forward pass's operations on an NVIDIA GPU (engine/model/backend.h). The
// model, its layer kinds, the session and the state blob are the engine's own C code; this file
// supplies device memory and launches the CUDA kernels on the model's stream. Weights keep the
// precision of the file: F32, BF16 and F16 as they are (gemm16.cu multiplies 16-bit weights),
// Q8_0 as 8-bit quants and F16 scales (gemm_q8.cu); the other quantized formats are expanded to f32.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdlib.h>
#include <string.h>

#include <stdio.h>

#include <algorithm>
#include <map>
#include <new>
#include <string>
#include <vector>

extern "C" {
#include "../../engine/model/engine.h"
}
#include "../../engine/model/synth.h"
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

// KLE_CUDA_PROFILE=1: every operation is bracketed by two events, and closing the model prints
// the GPU time per operation and shape to stderr (there is no nsys on the lent machines), over
// the last PROF_MAX / 2 to PROF_MAX operations
struct prof_rec {
  const char *op;
  int a, b, c;  // the shape that tells calls apart (matmul: rows, cols, tokens)
  cudaEvent_t start, end;
};
#define PROF_MAX (1 << 17)

struct kle_backend_ctx {
  cudaStream_t st = nullptr;
  void *ws = nullptr;  // workspace of the chunked KDA and MLA attention kernels
  long ws_bytes = 0;
  int32_t *tok = nullptr;  // a batch of token ids
  // weights live as long as the model: carved from slabs, since cudaMalloc rounds every block up
  // to 2 MiB (a 4.5 MiB expert matrix took 6: 29 GiB of the 48B model's 92 went to rounding)
  std::vector<std::pair<char *, size_t>> slabs;
  size_t slab_used = 0;
  bool prof = false;
  std::vector<prof_rec> recs;
  // uploads of weights and blobs go through two pinned buffers: the host fills one while the
  // other is copied, and the card reads pinned memory at full speed
  void *stage[2] = {nullptr, nullptr};
  cudaEvent_t staged[2] = {nullptr, nullptr};
  int32_t *grp = nullptr;  // a batch's MoE pairs by expert: offsets, then the order
  long grp_n = 0;
  char *samp = nullptr;  // sampling's scratch, its token, and the penalties' lists
  size_t samp_bytes = 0;
  // a captured decode step reads its token at tok[0] and the rows cached at tok[CUDA_BATCH]
  // (graph_step writes both); gen counts moves of the memory steps use beyond the session's own
  unsigned gen = 0;
  // a batched step's table of rows (rows_table): pinned, then on the device; the pinned copy is
  // rewritten once the last step's copy has run (rows_done)
  float *mm_ws = nullptr;  // a split matmul's partial products (kle_ops::matmul16_ws_floats)
  long mm_ws_n = 0;
  char *rows_host = nullptr, *rows_dev = nullptr;
  size_t rows_cap = 0;
  cudaEvent_t rows_done = nullptr;
  bool round_bf16 = false;  // kle_model_precision's KLE_PRECISION_BF16
};

static_assert(KLE_ROW_SLOTS == KLE_CUDA_ROW_SLOTS, "the engine's and the kernels' row tables must agree");

namespace {

// the launches are asynchronous: their errors surface here, at the next sync
int launched() { return cudaPeekAtLastError() == cudaSuccess ? KLE_OK : KLE_EDEVICE; }

kle_backend_ctx *cu_open() {
  kle_backend_ctx *cx = new (std::nothrow) kle_backend_ctx;
  if (!cx) return nullptr;
  const char *p = getenv("KLE_CUDA_PROFILE");
  cx->prof = p && *p && *p != '0';
  if (cudaStreamCreateWithFlags(&cx->st, cudaStreamNonBlocking) != cudaSuccess ||
      cudaMalloc(&cx->tok, sizeof(int32_t) * (CUDA_BATCH + 1)) != cudaSuccess) {
    cudaGetLastError();
    if (cx->st) cudaStreamDestroy(cx->st);
    delete cx;
    return nullptr;
  }
  return cx;
}

void prof_report(kle_backend_ctx *cx) {
  if (cx->recs.empty()) return;
  struct agg {
    double ms = 0;
    long n = 0;
  };
  std::map<std::string, agg> by;
  double total = 0;
  for (const prof_rec &r : cx->recs) {
    float ms = 0.f;
    cudaEventElapsedTime(&ms, r.start, r.end);
    char key[96];
    snprintf(key, sizeof key, "%s [%d %d %d]", r.op, r.a, r.b, r.c);
    agg &g = by[key];
    g.ms += ms;
    g.n++;
    total += ms;
  }
  float span = 0.f;
  cudaEventElapsedTime(&span, cx->recs.front().start, cx->recs.back().end);
  std::vector<std::pair<std::string, agg>> v(by.begin(), by.end());
  std::sort(v.begin(), v.end(), [](const auto &x, const auto &y) { return x.second.ms > y.second.ms; });
  fprintf(stderr, "KLE_CUDA_PROFILE: %zu operations, %.3f ms inside them, %.3f ms from the first to the last\n", cx->recs.size(), total,
          span);
  // the device's idle time between one operation's end and the next one's start (gaps under 1 ms:
  // longer ones are the host between steps and set-up), by the operation it waited for: where
  // the host, not the kernels, sets the pace
  std::map<std::string, agg> idle;
  double idle_ms = 0;
  for (size_t i = 1; i < cx->recs.size(); i++) {
    float ms = 0.f;
    if (cudaEventElapsedTime(&ms, cx->recs[i - 1].end, cx->recs[i].start) != cudaSuccess || ms <= 0.f || ms >= 1.f) continue;
    agg &g = idle[cx->recs[i].op];
    g.ms += ms;
    g.n++;
    idle_ms += ms;
  }
  std::vector<std::pair<std::string, agg>> iv(idle.begin(), idle.end());
  std::sort(iv.begin(), iv.end(), [](const auto &x, const auto &y) { return x.second.ms > y.second.ms; });
  fprintf(stderr, "  idle between operations: %.3f ms; before", idle_ms);
  for (size_t i = 0; i < iv.size() && i < 6; i++) fprintf(stderr, "%s %s %.3f ms (%ld)", i ? "," : "", iv[i].first.c_str(), iv[i].second.ms, iv[i].second.n);
  fprintf(stderr, "\n");
  for (const auto &e : v)
    fprintf(stderr, "  %8.3f ms %5.1f%% %7ld x %8.2f us  %s\n", e.second.ms, 100.0 * e.second.ms / total, e.second.n,
            1e3 * e.second.ms / e.second.n, e.first.c_str());
  for (prof_rec &r : cx->recs) {
    cudaEventDestroy(r.start);
    cudaEventDestroy(r.end);
  }
  cx->recs.clear();
}

void cu_close(kle_backend_ctx *cx) {
  cudaStreamSynchronize(cx->st);
  prof_report(cx);
  for (auto &sl : cx->slabs) cudaFree(sl.first);
  cudaFree(cx->grp);
  cudaFree(cx->samp);
  for (int i = 0; i < 2; i++) {
    if (cx->stage[i]) cudaFreeHost(cx->stage[i]);
    if (cx->staged[i]) cudaEventDestroy(cx->staged[i]);
  }
  cudaFree(cx->ws);
  cudaFree(cx->mm_ws);
  cudaFree(cx->tok);
  if (cx->rows_host) cudaFreeHost(cx->rows_host);
  cudaFree(cx->rows_dev);
  if (cx->rows_done) cudaEventDestroy(cx->rows_done);
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

#define SLAB_BYTES ((size_t)256 << 20)

// memory for a weight, uninitialized (synth or upload writes all of it), freed with the model
void *cu_alloc_weight(kle_backend_ctx *cx, size_t bytes) {
  bytes = (bytes + 255) & ~(size_t)255;
  if (cx->slabs.empty() || cx->slab_used + bytes > cx->slabs.back().second) {
    const size_t n = bytes > SLAB_BYTES ? bytes : SLAB_BYTES;
    char *p = nullptr;
    if (cudaMalloc(&p, n) != cudaSuccess) {
      cudaGetLastError();
      return nullptr;
    }
    try {
      cx->slabs.push_back({p, n});
    } catch (...) {
      cudaFree(p);
      return nullptr;
    }
    cx->slab_used = 0;
  }
  char *p = cx->slabs.back().first + cx->slab_used;
  cx->slab_used += bytes;
  return p;
}

void cu_release(kle_backend_ctx *cx, void *p) {
  if (!p) return;
  for (const auto &sl : cx->slabs)
    if ((char *)p >= sl.first && (char *)p < sl.first + sl.second) return;  // a weight: the model's close frees its slab
  cudaFree(p);  // waits for the device: no kernel still reads it
}

// brackets one operation with events when profiling
struct Span {
  kle_backend_ctx *cx;
  bool on;
  Span(kle_backend_ctx *c, const char *op, int a = 0, int b = 0, int cc = 0) : cx(c), on(c->prof) {
    if (!on) return;
    if (cx->recs.size() >= PROF_MAX) {  // the latest operations are the ones asked about: drop the older half
      for (size_t i = 0; i < PROF_MAX / 2; i++) {
        cudaEventDestroy(cx->recs[i].start);
        cudaEventDestroy(cx->recs[i].end);
      }
      cx->recs.erase(cx->recs.begin(), cx->recs.begin() + PROF_MAX / 2);
    }
    prof_rec r = {op, a, b, cc, nullptr, nullptr};
    cudaEventCreate(&r.start);
    cudaEventCreate(&r.end);
    cudaEventRecord(r.start, cx->st);
    cx->recs.push_back(r);
  }
  ~Span() {
    if (on) cudaEventRecord(cx->recs.back().end, cx->st);
  }
};

#define STAGE_BYTES ((size_t)32 << 20)

bool stage_ready(kle_backend_ctx *cx) {
  for (int i = 0; i < 2; i++) {
    if (!cx->stage[i] && cudaHostAlloc(&cx->stage[i], STAGE_BYTES, cudaHostAllocWriteCombined) != cudaSuccess) break;
    if (!cx->staged[i] && cudaEventCreateWithFlags(&cx->staged[i], cudaEventDisableTiming) != cudaSuccess) break;
  }
  cudaGetLastError();
  return cx->stage[1] && cx->staged[1];
}

// pageable host memory on the host's side: small copies wait for the stream, then for themselves;
// large ones go through the two pinned buffers in turn, so at most 64 MiB is pinned whatever
// the tensor or blob
int cu_upload(kle_backend_ctx *cx, void *dst, const void *src, size_t n) {
  if (n < (STAGE_BYTES >> 2) || !stage_ready(cx)) {
    CU(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, cx->st));
    CU(cudaStreamSynchronize(cx->st));
    return KLE_OK;
  }
  int k = 0;
  bool used[2] = {false, false};
  for (size_t off = 0; off < n; off += STAGE_BYTES, k ^= 1) {
    const size_t c = n - off < STAGE_BYTES ? n - off : STAGE_BYTES;
    if (used[k]) CU(cudaEventSynchronize(cx->staged[k]));  // its last copy has left it
    memcpy(cx->stage[k], (const char *)src + off, c);
    CU(cudaMemcpyAsync((char *)dst + off, cx->stage[k], c, cudaMemcpyHostToDevice, cx->st));
    CU(cudaEventRecord(cx->staged[k], cx->st));
    used[k] = true;
  }
  CU(cudaStreamSynchronize(cx->st));
  return KLE_OK;
}
int cu_download(kle_backend_ctx *cx, void *dst, const void *src, size_t n) {
  CU(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, cx->st));
  CU(cudaStreamSynchronize(cx->st));
  return KLE_OK;
}
int cu_copy(kle_backend_ctx *cx, void *dst, const void *src, size_t n) {
  Span sp(cx, "copy", (int)std::min(n, (size_t)INT32_MAX));
  CU(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, cx->st));
  return KLE_OK;
}
int cu_copy_n(kle_backend_ctx *cx, int n, void *const *dst, const void *src, size_t each) {
  Span sp(cx, "copy n", n, (int)std::min(each, (size_t)INT32_MAX));
  if (kle_ops::copy_rows(n, dst, src, each, cx->st)) return launched();
  for (int i = 0; i < n; i++) CU(cudaMemcpyAsync(dst[i], (const char *)src + (size_t)i * each, each, cudaMemcpyDeviceToDevice, cx->st));
  return KLE_OK;
}
int cu_sync(kle_backend_ctx *cx) {
  CU(cudaGetLastError());
  CU(cudaStreamSynchronize(cx->st));
  return KLE_OK;
}

int cu_precision(kle_backend_ctx *cx, int mode) {
  if (mode > 0 && (mode == KLE_PRECISION_BF16) != cx->round_bf16) {
    cx->round_bf16 = mode == KLE_PRECISION_BF16;
    cx->gen++;  // captured steps launched the other kernels
  }
  return cx->round_bf16 ? KLE_PRECISION_BF16 : KLE_PRECISION_F32;
}

// an MLA cache's format as the kernels' cache_bf16 flags (kle_cuda.h)
int mla_flags(const kle_backend_ctx *cx, int fmt) {
  return fmt == KLE_W_BF16 ? KLE_CUDA_CACHE_BF16 | (cx->round_bf16 ? KLE_CUDA_BF16_ROUNDED : 0) : 0;
}

int cu_mem_info(kle_backend_ctx *cx, uint64_t *free_b, uint64_t *total_b) {
  (void)cx;
  size_t f = 0, t = 0;
  CU(cudaMemGetInfo(&f, &t));
  *free_b = f;
  *total_b = t;
  return KLE_OK;
}

__global__ void synth_kernel(void *dst, int bf16, uint64_t n, uint64_t stream, float offset, float scale) {
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
    const float v = kle_synth_value(stream, i, offset, scale);
    if (bf16)
      ((uint16_t *)dst)[i] = kle_synth_bf16(v);
    else
      ((float *)dst)[i] = v;
  }
}

// Q8_0 in the q8 layout (ops.cuh): a thread a block of 32 values, quantized as kle_quantize's
// q8_0_encode does (d = amax / 127 stored as F16, q = round(x * (1 / d)), IEEE division here as
// there), so that the CPU engine holds the same blocks for the same seed
__global__ void synth_q8_kernel(int8_t *q, uint16_t *d, uint64_t nb, uint64_t stream, float offset, float scale) {
  for (uint64_t b = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; b < nb; b += (uint64_t)gridDim.x * blockDim.x) {
    float v[32], amax = 0.f;
#pragma unroll
    for (int j = 0; j < 32; j++) {
      v[j] = kle_synth_value(stream, b * 32 + j, offset, scale);
      amax = fmaxf(amax, fabsf(v[j]));
    }
    const float dd = amax / 127.0f, id = dd != 0.0f ? 1.0f / dd : 0.0f;
    d[b] = __half_as_ushort(__float2half_rn(dd));
    uint32_t w[8];
#pragma unroll
    for (int j = 0; j < 8; j++) {
      w[j] = 0;
#pragma unroll
      for (int i = 0; i < 4; i++) w[j] |= (uint32_t)(uint8_t)(int8_t)roundf(v[4 * j + i] * id) << (8 * i);
    }
    uint4 *dst = reinterpret_cast<uint4 *>(q + b * 32);
    dst[0] = make_uint4(w[0], w[1], w[2], w[3]);
    dst[1] = make_uint4(w[4], w[5], w[6], w[7]);
  }
}

int cu_synth(kle_backend_ctx *cx, void *dst, int fmt, uint64_t n, uint64_t stream, float offset, float scale) {
  if (fmt != KLE_W_F32 && fmt != KLE_W_BF16 && !(fmt == KLE_W_Q8_0 && n % 32 == 0)) return KLE_EINVAL;
  if (n == 0) return KLE_OK;
  if (fmt == KLE_W_Q8_0) {
    const uint64_t nb = n / 32, blocks = (nb + 255) / 256;
    synth_q8_kernel<<<(unsigned)(blocks < 65536 ? blocks : 65536), 256, 0, cx->st>>>((int8_t *)dst, (uint16_t *)((int8_t *)dst + n), nb,
                                                                                      stream, offset, scale);
    return launched();
  }
  const uint64_t blocks = (n + 255) / 256;
  synth_kernel<<<(unsigned)(blocks < 65536 ? blocks : 65536), 256, 0, cx->st>>>(dst, fmt == KLE_W_BF16, n, stream, offset, scale);
  return launched();
}

// A Q8_0 tensor's GGUF blocks (34 bytes: F16 scale, 32 int8) split into the q8 layout (ops.cuh),
// the same bytes in all; NULL if out of memory
static uint8_t *q8_split(const kle_tensor *t) {
  const size_t n = (size_t)t->rows * t->cols, nb = n / 32;
  uint8_t *out = (uint8_t *)malloc(n + 2 * nb);
  if (!out) return nullptr;
  for (size_t b = 0; b < nb; b++) {
    memcpy(out + n + 2 * b, t->data + 34 * b, 2);
    memcpy(out + 32 * b, t->data + 34 * b + 2, 32);
  }
  return out;
}

// A host tensor in device memory: F32, BF16 and F16 byte for byte, Q8_0 in the q8 layout (the
// kernels of gemm_q8.cu), the other quantized formats as f32. The host bytes are freed once copied.
int cu_place(kle_backend_ctx *cx, kle_tensor *t) {
  const bool keep = t->fmt == KLE_W_F32 || t->fmt == KLE_W_BF16 || t->fmt == KLE_W_F16, q8 = t->fmt == KLE_W_Q8_0;
  void *tmp = keep ? nullptr : q8 ? (void *)q8_split(t) : (void *)kle_tensor_to_f32(t);
  if (!keep && !tmp) return KLE_ENOMEM;
  const size_t bytes = keep || q8 ? (size_t)t->bytes : sizeof(float) * (size_t)t->rows * t->cols;
  void *d = cu_alloc_weight(cx, bytes);
  const int rc = d ? cu_upload(cx, d, keep ? (const void *)t->data : tmp, bytes) : KLE_EDEVICE;
  free(tmp);
  if (rc != KLE_OK) return rc;  // a weight's block goes with the model
  free(t->data);
  t->data = (uint8_t *)d;
  if (!keep && !q8) t->fmt = KLE_W_F32;
  t->bytes = (long)bytes;
  return KLE_OK;
}

// A MoE layer's experts: E x 3 device pointers and the format of each of gate, up, down (the
// kernels take one format per matrix kind: a file that mixes them within a kind is refused).
struct experts_tab {
  void **dev;
  int fmt[3];
  int E;
};

int cu_experts_table(kle_backend_ctx *cx, const kle_tensor *ex, int E, void **handle) {
  experts_tab *tab = (experts_tab *)calloc(1, sizeof(experts_tab));
  void **host = (void **)malloc(sizeof(void *) * (size_t)E * 3);
  if (!tab || !host) {
    free(tab);
    free(host);
    return KLE_ENOMEM;
  }
  for (int w = 0; w < 3; w++) tab->fmt[w] = ex[w].fmt;
  tab->E = E;
  int rc = KLE_OK;
  for (int i = 0; i < E * 3; i++) {
    host[i] = ex[i].data;
    if (ex[i].fmt != tab->fmt[i % 3]) rc = KLE_EINVAL;
  }
  if (rc == KLE_OK) {
    tab->dev = (void **)cu_alloc(cx, sizeof(void *) * (size_t)E * 3);
    rc = tab->dev ? cu_upload(cx, tab->dev, host, sizeof(void *) * (size_t)E * 3) : KLE_EDEVICE;
  }
  free(host);
  if (rc != KLE_OK) {
    cudaFree(tab->dev);
    free(tab);
    return rc;
  }
  *handle = tab;
  return KLE_OK;
}
void cu_experts_table_free(kle_backend_ctx *cx, void *handle) {
  experts_tab *tab = (experts_tab *)handle;
  cu_release(cx, tab->dev);
  free(tab);
}

int ensure_ws(kle_backend_ctx *cx, long bytes) {
  if (bytes <= cx->ws_bytes) return KLE_OK;
  cudaFree(cx->ws);  // synchronizes: no kernel still reads the old workspace
  cx->ws = nullptr;
  cx->ws_bytes = 0;
  const long want = bytes + bytes / 4;
  cx->gen++;  // captured steps addressed the old one
  CU(cudaMalloc(&cx->ws, want));
  cx->ws_bytes = want;
  return KLE_OK;
}

const float *F(const kle_tensor *t) { return (const float *)t->data; }

const uint16_t *H(const kle_tensor *t) { return (const uint16_t *)t->data; }

// the matmuls' workspace (split products' partials, activations rounded to BF16), grown to `need` floats
static int ensure_mm_ws(kle_backend_ctx *cx, long need) {
  if (need <= cx->mm_ws_n) return KLE_OK;
  cudaFree(cx->mm_ws);  // synchronizes: no kernel still reads the old one
  cx->mm_ws = nullptr;
  cx->mm_ws_n = 0;
  cx->gen++;  // captured steps addressed the old one
  CU(cudaMalloc(&cx->mm_ws, sizeof(float) * need));
  cx->mm_ws_n = need;
  return KLE_OK;
}

int cu_matmul(kle_backend_ctx *cx, const kle_tensor *w, const float *X, float *Y, int T) {
  Span sp(cx, w->fmt == KLE_W_F32 ? "matmul f32" : w->fmt == KLE_W_Q8_0 ? "matmul q8_0" : "matmul 16-bit", w->rows, w->cols, T);
  KLE_TRY(ensure_mm_ws(cx, w->fmt == KLE_W_F32 ? kle_ops::matmul_ws_floats(T, w->rows, w->cols) : kle_ops::matmul16_ws_floats(T, w->rows, w->cols)));
  if (w->fmt == KLE_W_F32)
    kle_ops::matmul(F(w), X, Y, T, w->rows, w->cols, cx->st, cx->mm_ws, cx->mm_ws_n);
  else {
    if (w->fmt == KLE_W_Q8_0) kle_ops::matmul_q8(w->data, X, Y, T, w->rows, w->cols, cx->st, cx->mm_ws, cx->mm_ws_n, cx->round_bf16);
    else kle_ops::matmul16(w->fmt == KLE_W_BF16, H(w), X, Y, T, w->rows, w->cols, cx->st, cx->mm_ws, cx->mm_ws_n, cx->round_bf16);
  }
  return launched();
}

// whether a batch's products with several weights take matmul16_n (KLE_CUDA_MATMUL_SETS=0: one
// by one, a before/after in one run)
static bool matmul_sets() {
  static const bool v = kle_ops::env_on("KLE_CUDA_MATMUL_SETS");
  return v;
}

// Products with several weights in one launch: one token's where each fits gemv_multi, a batch's
// (BF16 precision, >= 128 tokens, every weight BF16 of one width) through matmul16_n; else
// KLE_ENOSYS, and the forward pass makes them one by one
int cu_matmul_n(kle_backend_ctx *cx, int n, const kle_tensor *const *w, const float *const *X, float *const *Y, int T) {
  kle_ops::mv_set set = {};
  if (n < 1 || n > kle_ops::MV_MAX || (T != 1 && (!cx->round_bf16 || !matmul_sets()))) return KLE_ENOSYS;
  long rows = 0;
  for (int i = 0; i < n; i++) {
    const int f = w[i]->fmt;
    set.e[i] = {w[i]->data, X[i], Y[i], w[i]->rows, w[i]->cols,
                f == KLE_W_F32 ? kle_ops::MV_F32 : f == KLE_W_BF16 ? kle_ops::MV_BF16 : kle_ops::MV_F16, 0};
    if (f != KLE_W_F32 && f != KLE_W_BF16 && f != KLE_W_F16) return KLE_ENOSYS;
    if (T == 1 && !kle_ops::gemv_multi_ok(set.e[i])) return KLE_ENOSYS;
    rows += w[i]->rows;
  }
  set.n = n;
  if (T == 1) {
    Span sp(cx, "matmul several", n, T);
    kle_ops::gemv_multi(set, cx->st);
    return launched();
  }
  const long need = kle_ops::matmul16_n_ws_floats(set, T);
  if (need < 0) return KLE_ENOSYS;
  Span sp(cx, "matmul 16-bit several", (int)rows, w[0]->cols, T);
  KLE_TRY(ensure_mm_ws(cx, need));
  if (!kle_ops::matmul16_n(set, T, cx->st, cx->mm_ws, cx->mm_ws_n)) return KLE_ENOSYS;
  return launched();
}

int cu_embed(kle_backend_ctx *cx, const kle_tensor *table, const int32_t *tokens, float *x, int T) {
  Span sp(cx, "embed", T);
  // NULL: a captured step's token, which graph_step wrote at tok[0]
  if (tokens) CU(cudaMemcpyAsync(cx->tok, tokens, sizeof(int32_t) * T, cudaMemcpyHostToDevice, cx->st));
  else if (T != 1) return KLE_EINVAL;
  if (table->fmt == KLE_W_F32)
    kle_ops::embed(F(table), cx->tok, x, T, table->cols, cx->st);
  else if (table->fmt == KLE_W_Q8_0)
    kle_ops::embed_q8(table->data, table->rows, cx->tok, x, T, table->cols, cx->st);
  else
    kle_ops::embed16(table->fmt == KLE_W_BF16, H(table), cx->tok, x, T, table->cols, cx->st);
  return launched();
}

int cu_rmsnorm(kle_backend_ctx *cx, const float *x, const float *gate, const float *w, float *y, int rows, int D, float eps) {
  Span sp(cx, gate ? "rmsnorm gated" : "rmsnorm", rows, D);
  kle_ops::rmsnorm(x, gate, w, y, rows, D, eps, cx->st);
  return launched();
}

int cu_add(kle_backend_ctx *cx, float *x, const float *y, size_t n) {
  Span sp(cx, "add", (int)n);
  kle_ops::add(x, y, (long)n, cx->st);
  return launched();
}

int cu_add_rmsnorm(kle_backend_ctx *cx, float *x, const float *y, const float *w, float *h, int rows, int D, float eps) {
  Span sp(cx, "add_rmsnorm", rows, D);
  kle_ops::add_rmsnorm(x, y, w, h, rows, D, eps, cx->st);
  return launched();
}

int cu_sigmoid(kle_backend_ctx *cx, const float *x, float *y, size_t n) {
  Span sp(cx, "sigmoid", (int)n);
  kle_ops::sigmoid(x, y, (long)n, cx->st);
  return launched();
}

int cu_swiglu(kle_backend_ctx *cx, const float *gate, const float *up, float *out, size_t n) {
  Span sp(cx, "swiglu", (int)n);
  kle_ops::swiglu(gate, up, out, (long)n, cx->st);
  return launched();
}

int cu_conv_short(kle_backend_ctx *cx, const float *x, const float *wT, float *tail, float *y, int T, int C, int W) {
  Span sp(cx, "conv_short", T, C);
  kle_ops::conv_short(x, wT, tail, y, T, C, W, cx->st);
  return launched();
}

int cu_kda_gate(kle_backend_ctx *cx, const float *x, const float *A_log, const float *dt_bias, float *g, int T, int H, int K,
                int Kg, float lower_bound) {
  Span sp(cx, "kda_gate", T);
  kle_ops::kda_gate(x, A_log, dt_bias, g, T, H, K, Kg, lower_bound, cx->st);
  return launched();
}

int cu_kda_recur(kle_backend_ctx *cx, float *S, const float *q, const float *k, const float *v, const float *g,
                 const float *beta, float *o, int T, int H, int K, int V, float scale) {
  Span sp(cx, "kda_recur", T);
  if (T >= 64) {  // a whole chunk or more: the chunk form's parallel work pays for itself
    KLE_TRY(ensure_ws(cx, kle_cuda_kda_chunk_workspace_bytes(T, H, K, V)));
    return kle_cuda_kda_chunk(S, q, k, v, g, beta, o, T, H, K, V, scale, KLE_KDA_L2NORM_QK, cx->ws, cx->ws_bytes, cx->st);
  }
  return kle_cuda_kda_recurrent(S, q, k, v, g, beta, o, T, H, K, V, scale, KLE_KDA_L2NORM_QK, cx->st);
}

// The step is launched overlapped: it streams the layer's state and conv windows while the
// projection before it (the output gate's, a matvec that writes none of them) finishes.
int cu_kda_fused_step(kle_backend_ctx *cx, const kle_kda_fused_args *a) {
  Span sp(cx, "kda_fused_step", a->H, a->K);
  if (a->Kg != a->K || (a->K != 64 && a->K != 128) || a->W < 1 || a->W > 16) return KLE_ENOSYS;
  const kle_cuda_kda_layer_args la = {a->xq, a->xk, a->xv, a->wq, a->wk, a->wv, a->tq, a->tk, a->tv,
                                      a->graw, a->A_log, a->dt_bias, a->lower_bound, a->braw, a->oraw, a->onorm,
                                      a->eps, a->S, a->o, KLE_CUDA_KDA_OVERLAP};
  return kle_cuda_kda_layer_step(&la, 1, a->H, a->K, a->V, a->W, a->scale, cx->st);
}

int cu_rows_table(kle_backend_ctx *cx, const void *host, size_t bytes, void **dev) {
  if (bytes > cx->rows_cap) {
    CU(cudaStreamSynchronize(cx->st));  // the last step may still read the old table
    if (cx->rows_host) cudaFreeHost(cx->rows_host);
    cudaFree(cx->rows_dev);
    cx->rows_host = cx->rows_dev = nullptr;
    cx->rows_cap = 0;
    const size_t cap = std::max(bytes, (size_t)64 << 10);
    CU(cudaMallocHost((void **)&cx->rows_host, cap));
    CU(cudaMalloc((void **)&cx->rows_dev, cap));
    cx->rows_cap = cap;
  }
  if (!cx->rows_done) CU(cudaEventCreateWithFlags(&cx->rows_done, cudaEventDisableTiming));
  else CU(cudaEventSynchronize(cx->rows_done));
  memcpy(cx->rows_host, host, bytes);
  // the device copy is rewritten in stream order: after the last step's kernels have read it
  CU(cudaMemcpyAsync(cx->rows_dev, cx->rows_host, bytes, cudaMemcpyHostToDevice, cx->st));
  CU(cudaEventRecord(cx->rows_done, cx->st));
  *dev = cx->rows_dev;
  return KLE_OK;
}

int cu_kda_fused_rows(kle_backend_ctx *cx, const kle_kda_fused_args *a, void *const *rows, int B) {
  Span sp(cx, "kda_fused_rows", B, a->H, a->K);
  if (a->Kg != a->K || (a->K != 64 && a->K != 128) || a->W < 1 || a->W > 16) return KLE_ENOSYS;
  const kle_cuda_kda_layer_args la = {a->xq, a->xk, a->xv, a->wq, a->wk, a->wv, nullptr, nullptr, nullptr,
                                      a->graw, a->A_log, a->dt_bias, a->lower_bound, a->braw, a->oraw, a->onorm,
                                      a->eps, nullptr, a->o, KLE_CUDA_KDA_OVERLAP, rows};
  return kle_cuda_kda_layer_step(&la, B, a->H, a->K, a->V, a->W, a->scale, cx->st);
}

// every row's cache row, then every row's attention over its own cache, in two launches and a merge
int cu_mla_decode_rows(kle_backend_ctx *cx, const float *kv, const float *w, const float *qlat, void *const *rows,
                       const int32_t *lens, int maxlen, int fmt, int B, int H, int R, int rope, float eps, float scale, float *out) {
  Span sp(cx, "mla_decode_rows", B, maxlen);
  const long ws = kle_cuda_mla_rows_workspace_bytes(maxlen, B, H, R + rope, R);
  if (ws <= 0) return KLE_ENOSYS;
  KLE_TRY(ensure_ws(cx, ws));
  kle_ops::mla_cache_write(kv, w, nullptr, fmt == KLE_W_BF16, lens, 0, B, R, rope, eps, cx->st, rows);
  KLE_TRY(launched());
  return kle_cuda_mla_rows(qlat, rows, lens, maxlen, mla_flags(cx, fmt), B, H, R + rope, R, scale, out, cx->ws, cx->ws_bytes, cx->st);
}

int cu_mla_cache_write(kle_backend_ctx *cx, const float *kv, const float *w, void *cache, int fmt, int L0, int T, int R,
                       int rope, float eps) {
  Span sp(cx, "mla_cache_write", T);
  if (L0 < 0 && T != 1) return KLE_EINVAL;
  // L0 < 0: the row is the length graph_step wrote
  kle_ops::mla_cache_write(kv, w, cache, fmt == KLE_W_BF16, L0 < 0 ? cx->tok + CUDA_BATCH : nullptr, L0 < 0 ? 0 : L0, T, R,
                           rope, eps, cx->st);
  return launched();
}

int cu_mla_absorb(kle_backend_ctx *cx, const float *W_uk, const float *q, float *qlat, int T, int H, int nope, int rope, int R) {
  Span sp(cx, "mla_absorb", T);
  kle_ops::mla_absorb(W_uk, q, qlat, T, H, nope, rope, R, cx->st);
  return launched();
}

// Scores of a scored batch in workspace at once: [T, H, L] floats, bounded by query groups
#define SCORED_WS_BYTES (256l << 20)

// decode and prefill alike: the tensor-core kernel where the latent widths allow; a bounded
// cache's scored attention in groups of queries whose scores fit SCORED_WS_BYTES
int cu_mla_attend(kle_backend_ctx *cx, const float *qlat, const void *cache, int fmt, int L0, int T, int H, int D, int Dv,
                  float scale, float *out, float *score, float decay) {
  const int bf16 = mla_flags(cx, fmt);
  if (L0 < 0) {  // a captured decode step: the length graph_step wrote, at most -L0 rows
    if (T != 1 || score) return KLE_EINVAL;
    const long ws = kle_cuda_mla_step_workspace_bytes(-L0, H, Dv);
    if (ws <= 0) return KLE_ENOSYS;
    KLE_TRY(ensure_ws(cx, ws));
    return kle_cuda_mla_step(qlat, cache, bf16, cx->tok + CUDA_BATCH, -L0, H, D, Dv, scale, out, cx->ws, cx->ws_bytes, cx->st);
  }
  Span sp(cx, score ? "mla_attend scored" : "mla_attend", L0, T);
  if (score) {
    long per_query = (long)H * (L0 + T) * 4;
    int group = (int)(SCORED_WS_BYTES / (per_query > 0 ? per_query : 1));
    group = group < 1 ? 1 : group > T ? T : group;
    for (int t0 = 0; t0 < T; t0 += group) {
      const int n = T - t0 < group ? T - t0 : group;
      const long ws = kle_cuda_mla_attend_scored_workspace_bytes(L0 + t0 + n, n, H, Dv);
      KLE_TRY(ensure_ws(cx, ws));
      KLE_TRY(kle_cuda_mla_attend_scored(qlat + (size_t)t0 * H * D, cache, bf16, L0 + t0, n, H, D, Dv, scale,
                                         out + (size_t)t0 * H * Dv, score, decay, cx->ws, cx->ws_bytes, cx->st));
    }
    return KLE_OK;
  }
  KLE_TRY(ensure_ws(cx, kle_cuda_mla_attend_workspace_bytes(L0 + T, T, H, Dv)));
  return kle_cuda_mla_attend(qlat, cache, bf16, L0, T, H, D, Dv, scale, out, cx->ws, cx->ws_bytes, cx->st);
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
// (the row moves as 32-bit words: Dc of them for f32 values, Dc / 2 for BF16 ones)
__global__ void __launch_bounds__(1024) kv_drop_one_kernel(uint32_t *cache, int Dc, float *score, uint32_t *info, int M, uint32_t sink,
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

int cu_kv_drop_one(kle_backend_ctx *cx, void *cache, int Dc, int fmt, float *score, uint32_t *info, int M, uint32_t sink,
                   int64_t recent) {
  if (M <= 0 || Dc <= 0 || (fmt == KLE_W_BF16 && Dc % 2)) return KLE_EINVAL;
  kv_drop_one_kernel<<<1, 1024, 0, cx->st>>>((uint32_t *)cache, fmt == KLE_W_BF16 ? Dc / 2 : Dc, score, info, M, sink,
                                             (long long)recent);
  return launched();
}

int cu_mla_up_v(kle_backend_ctx *cx, const float *W_uv, const float *o, float *y, int T, int H, int vh, int R) {
  Span sp(cx, "mla_up_v", T);
  kle_ops::mla_up_v(W_uv, o, y, T, H, vh, R, cx->st);
  return launched();
}

int cu_moe_route(kle_backend_ctx *cx, const float *logits, const float *bias, int T, int E, int topk, int n_group,
                 int topk_group, int act, int renorm, float scale, int32_t *idx, float *w) {
  Span sp(cx, "moe_route", T, E);
  kle_ops::moe_route(logits, bias, T, E, topk, n_group, topk_group, act, renorm, scale, idx, w, cx->st);
  return launched();
}

// pairs an expert, in percent, from which a batch takes the grouped GEMMs: 100 (cu_moe_experts
// says why); KLE_CUDA_GROUPED_PCT=200 restores the earlier cut (a benchmark's before/after in one run)
static int grouped_pct() {
  static const int v = [] {
    const char *e = getenv("KLE_CUDA_GROUPED_PCT");
    const int x = e ? atoi(e) : 0;
    return x > 0 ? x : 100;
  }();
  return v;
}

// whether BF16 experts' grouped GEMMs launch a block per listed row tile and make gate and up in
// one launch (KLE_CUDA_MOE_LISTED=0: a block per expert and possible tile, gate, up and SwiGLU in
// three launches; a before/after in one run)
static bool moe_listed() {
  static const bool v = kle_ops::env_on("KLE_CUDA_MOE_LISTED");
  return v;
}

// whether P (token, choice) pairs take the grouped GEMMs (cu_moe_experts says why)
static bool takes_grouped(const experts_tab *tab, int P, int D, int MI, const float *h) {
  const bool one = tab->fmt[0] != KLE_W_F32 && tab->fmt[0] == tab->fmt[1] && tab->fmt[1] == tab->fmt[2];  // 16-bit or Q8_0
  return one && P >= 32 && 100L * P >= (long)grouped_pct() * tab->E && kle_ops::grouped_ok(D, MI, h);
}

// one expert matvec per (token, choice), then the weighted sum per token
int cu_moe_experts(kle_backend_ctx *cx, const void *experts, const int32_t *idx, const float *w, const float *h, float *y,
                   int T, int K, int D, int MI, float *scratch) {
  Span sp(cx, "moe_experts", T, K);
  const int P = T * K;
  const experts_tab *tab = (const experts_tab *)experts;
  float *g = scratch, *u = g + (size_t)P * MI, *ye = u + (size_t)P * MI;
  // one expert matrix kind for P (token, choice) pairs, in its format
  auto mv = [&](int which, const float *X, int x_div, float *Y, int N, int Kd) {
    if (tab->fmt[which] == KLE_W_F32)
      kle_ops::expert_matvec((const float *const *)tab->dev, which, idx, X, x_div, Y, P, N, Kd, cx->st);
    else if (tab->fmt[which] == KLE_W_Q8_0)
      kle_ops::expert_matvec_q8(tab->dev, which, idx, X, x_div, Y, P, N, Kd, cx->st);
    else
      kle_ops::expert_matvec16(tab->fmt[which] == KLE_W_BF16, (const uint16_t *const *)tab->dev, which, idx, X, x_div, Y, P, N, Kd, cx->st);
  };
  // a batch: each expert's matrices multiply all of its pairs at once (prefill at 48B read every
  // routed expert row once per pair: 9.4 ms a layer for a 512-token batch with rows read once per
  // 8 pairs on the CUDA cores). Not for a few pairs over many experts (a batched decode step of 8
  // streams at 48B: 64 pairs over about 58 experts, a tile for each one's single pair): there
  // every expert is read once either way, and the matvecs stream it. From a pair an expert (32
  // streams: 256 pairs over about 162 experts) the matvecs read an expert once per pair, 3.6 GB a
  // layer where the experts are 2.3 (872 us a layer, profiled), and the tensor-core tiles, which
  // read it once, take over. (A CUDA-core kernel reading each row once per 8 pairs had measured
  // slower than the matvecs there: 1,256 against 873 us.)
  if (takes_grouped(tab, P, D, MI, h)) {
    const int few = P < 16 * tab->E;
    const int is_bf16 = tab->fmt[0] == KLE_W_BF16;
    // BF16's tensor-core kernels: a block per listed row tile, gate and up in one launch
    const bool listed = is_bf16 && moe_listed();
    const int tm = few ? 16 : 64, map_n = listed ? kle_ops::moe_tiles(P, tab->E, tm) : 0;
    const long need = (long)tab->E + 1 + P + map_n;
    if (need > cx->grp_n) {
      cudaFree(cx->grp);  // synchronizes: no kernel still reads the old one
      cx->grp = nullptr;
      cx->grp_n = 0;
      CU(cudaMalloc(&cx->grp, sizeof(int32_t) * need));
      cx->grp_n = need;
    }
    const uint16_t *const *W = (const uint16_t *const *)tab->dev;
    int32_t *offs = cx->grp, *order = cx->grp + tab->E + 1, *map = listed ? order + P : nullptr;
    kle_ops::moe_group(idx, P, tab->E, offs, order, cx->st, tm, map);
    const bool rnd = cx->round_bf16;
    // one matrix kind of every expert over its pairs, in the layer's format
    auto grouped = [&](int which, const float *X, int x_div, float *Y, int N, int Kd) {
      if (tab->fmt[0] == KLE_W_Q8_0) kle_ops::grouped_mm_q8(few, tab->dev, which, offs, order, tab->E, X, x_div, Y, T, N, Kd, cx->st, rnd);
      else kle_ops::grouped_mm16(is_bf16, few, W, which, offs, order, tab->E, X, x_div, Y, T, N, Kd, cx->st, rnd, map, P);
    };
    if (listed) grouped(kle_ops::MOE_GATE_UP, h, K, g, MI, D);
    else {
      grouped(0, h, K, g, MI, D);
      grouped(1, h, K, u, MI, D);
      kle_ops::swiglu(g, u, g, (long)P * MI, cx->st);
    }
    grouped(2, g, 1, ye, D, MI);
    kle_ops::moe_combine(ye, w, y, T, K, D, 0, cx->st);
    return launched();
  }
  if (tab->fmt[0] == KLE_W_Q8_0 && tab->fmt[1] == KLE_W_Q8_0) {
    kle_ops::expert_gate_up_q8(tab->dev, idx, h, K, g, P, MI, D, cx->st);
  } else if (tab->fmt[0] == tab->fmt[1] && tab->fmt[0] != KLE_W_F32) {
    kle_ops::expert_gate_up16(tab->fmt[0] == KLE_W_BF16, (const uint16_t *const *)tab->dev, idx, h, K, g, P, MI, D, cx->st);
  } else {
    mv(0, h, K, g, MI, D);
    mv(1, h, K, u, MI, D);
    kle_ops::swiglu(g, u, g, (long)P * MI, cx->st);
  }
  if (tab->fmt[2] == KLE_W_Q8_0 && ((uintptr_t)g & 15) == 0) {
    kle_ops::expert_down_combine_q8(tab->dev, idx, g, w, y, T, K, D, MI, cx->st);
    return launched();
  }
  if (tab->fmt[2] != KLE_W_F32 && MI % 8 == 0 && ((uintptr_t)g & 15) == 0) {
    kle_ops::expert_down_combine16(tab->fmt[2] == KLE_W_BF16, (const uint16_t *const *)tab->dev, idx, g, w, y, T, K, D, MI, cx->st);
    return launched();
  }
  mv(2, g, 1, ye, D, MI);
  kle_ops::moe_combine(ye, w, y, T, K, D, 0, cx->st);
  return launched();
}

// The routed experts and the shared one in the routed experts' two launches, for up to 8 tokens:
// the per-pair kernels read the shared expert once per token, which a batch of 32 streams paid
// for (33.9 ms a 48B step against 32.0 with the shared expert's own products, which read it once).
// More tokens, a shared expert of another shape or format: KLE_ENOSYS, the general way.
int cu_moe_experts_shared(kle_backend_ctx *cx, const void *experts, const kle_tensor *gs, const kle_tensor *us, const kle_tensor *ds,
                          const int32_t *idx, const float *w, const float *h, float *y, int T, int K, int D, int MI, float *scratch) {
  const experts_tab *tab = (const experts_tab *)experts;
  const int P = T * K;
  const int f = tab->fmt[0];
  const bool grouped = takes_grouped(tab, P, D, MI, h);
  const bool shapes = gs->rows == MI && us->rows == MI && gs->cols == D && us->cols == D && ds->rows == D && ds->cols == MI;
  const bool fmts = f != KLE_W_F32 && tab->fmt[1] == f && tab->fmt[2] != KLE_W_F32 && gs->fmt == f && us->fmt == f && ds->fmt == tab->fmt[2];
  if (T > 8 || grouped || !shapes || !fmts || MI % 8 || D % 8 || ((uintptr_t)scratch & 15) || ((uintptr_t)h & 15)) return KLE_ENOSYS;
  Span sp(cx, "moe_experts + shared", T, K);
  float *g = scratch;  // P + T rows of MI: within the gate and up rows moe_experts uses (2 P MI)
  if (f == KLE_W_Q8_0 && tab->fmt[2] == KLE_W_Q8_0) {
    kle_ops::expert_gate_up_q8(tab->dev, idx, h, K, g, P, MI, D, cx->st, T, gs->data, us->data);
    kle_ops::expert_down_combine_q8(tab->dev, idx, g, w, y, T, K, D, MI, cx->st, ds->data);
    return launched();
  }
  if (f == KLE_W_Q8_0 || tab->fmt[2] == KLE_W_Q8_0) return KLE_ENOSYS;  // mixed with 16-bit: the general way
  kle_ops::expert_gate_up16(f == KLE_W_BF16, (const uint16_t *const *)tab->dev, idx, h, K, g, P, MI, D, cx->st, T, H(gs), H(us));
  kle_ops::expert_down_combine16(tab->fmt[2] == KLE_W_BF16, (const uint16_t *const *)tab->dev, idx, g, w, y, T, K, D, MI, cx->st, H(ds));
  return launched();
}

// a token from the logits where they are: only the penalties' lists go up and the token comes down
int cu_sample(kle_backend_ctx *cx, const float *logits, int V, const kle_sample_args *a, int32_t *token) {
  Span sp(cx, "sample", V, a->n, a->nb);
  const size_t base = (kle_ops::sample_scratch_bytes(V) + 255) & ~(size_t)255;
  const size_t ints = 2 * (size_t)a->n + (size_t)a->nb, dbls = (size_t)a->n + (size_t)a->nb;
  const size_t ibytes = (4 * ints + 7) & ~(size_t)7, need = base + 256 + ibytes + 8 * dbls;
  if (need > cx->samp_bytes) {
    cudaFree(cx->samp);  // waits for the device: nothing reads the old one
    cx->samp = nullptr;
    cx->samp_bytes = 0;
    CU(cudaMalloc(&cx->samp, need));
    cx->samp_bytes = need;
  }
  int32_t *out = (int32_t *)(cx->samp + base);
  char *lists = cx->samp + base + 256;
  kle_ops::SamplePatch patch = {};
  if (ints) {
    std::vector<char> h;
    try {
      h.resize(ibytes + 8 * dbls);
    } catch (...) {
      return KLE_ENOMEM;
    }
    int32_t *hi = (int32_t *)h.data();
    memcpy(hi, a->toks, 4 * (size_t)a->n);
    memcpy(hi + a->n, a->counts, 4 * (size_t)a->n);
    memcpy(hi + 2 * (size_t)a->n, a->btoks, 4 * (size_t)a->nb);
    memcpy(h.data() + ibytes, a->cbias, 8 * (size_t)a->n);
    memcpy(h.data() + ibytes + 8 * (size_t)a->n, a->bvals, 8 * (size_t)a->nb);
    // pageable: the call returns once the bytes are staged, so h may go
    CU(cudaMemcpyAsync(lists, h.data(), h.size(), cudaMemcpyHostToDevice, cx->st));
    const int32_t *di = (const int32_t *)lists;
    const double *dd = (const double *)(lists + ibytes);
    patch = {di, di + a->n, di + 2 * (size_t)a->n, dd, dd + a->n, a->n, a->nb, a->rep, a->freq, a->pres};
  }
  const kle_ops::SampleParams p = {a->temperature, a->top_p, a->log_min_p, a->top_k, a->u};
  CU(kle_ops::sample(logits, V, p, patch, cx->samp, out, cx->st));
  CU(cudaPeekAtLastError());
  return cu_download(cx, token, out, sizeof *token);
}

// ---------------------------------------------------------------- the decode step as a CUDA graph
struct step_graph {
  cudaGraphExec_t exec = nullptr;
  unsigned gen = 0;     // cx->gen when captured (or when the eager step ran)
  bool armed = false;   // a step ran eagerly since the memory last moved: buffers are sized
  bool failed = false;  // the step could not be captured while gen held
};

__global__ void set_step_kernel(int32_t *tok, int32_t *len, int32_t token, int32_t L0) {
  *tok = token;
  *len = L0;
}

void cu_graph_free(kle_backend_ctx *cx, void *graph) {
  (void)cx;
  step_graph *g = (step_graph *)graph;
  if (!g) return;
  if (g->exec) cudaGraphExecDestroy(g->exec);
  delete g;
}

// About 700 launches a token at 48B: replayed as one graph they run back to back instead of as
// fast as the host issues them. The first step after memory moved runs eagerly (sizing any
// workspace the capture must not allocate), the next is captured, later ones replay it.
// KLE_CUDA_GRAPHS=0 (read at each step) turns it off; so does the per-op profiler.
int cu_graph_step(kle_backend_ctx *cx, void **slot, int32_t token, int32_t L0, int (*body)(void *), void *arg) {
  const char *env = getenv("KLE_CUDA_GRAPHS");
  if ((env && *env == '0') || cx->prof) return KLE_ENOSYS;
  step_graph *g = (step_graph *)*slot;
  if (!g) {
    g = new (std::nothrow) step_graph;
    if (!g) return KLE_ENOSYS;
    *slot = g;
  }
  if (g->gen != cx->gen) {
    if (g->exec) cudaGraphExecDestroy(g->exec);
    *g = step_graph();
    g->gen = cx->gen;
  }
  if (g->failed) return KLE_ENOSYS;
  set_step_kernel<<<1, 1, 0, cx->st>>>(cx->tok, cx->tok + CUDA_BATCH, token, L0);
  if (g->exec) {
    CU(cudaGraphLaunch(g->exec, cx->st));
    return launched();
  }
  if (!g->armed) {
    const int rc = body(arg);
    if (rc == KLE_OK) {
      g->armed = true;
      g->gen = cx->gen;
    } else if (rc == KLE_ENOSYS) {
      g->failed = true;  // a shape the step's kernels do not run this way
    }
    return rc;
  }
  cudaGraph_t graph = nullptr;
  if (cudaStreamBeginCapture(cx->st, cudaStreamCaptureModeRelaxed) != cudaSuccess) {
    cudaGetLastError();
    g->failed = true;
    return KLE_ENOSYS;
  }
  const int rc = body(arg);
  const cudaError_t ce = cudaStreamEndCapture(cx->st, &graph);
  const bool ok = rc == KLE_OK && ce == cudaSuccess && graph && cx->gen == g->gen &&
                  cudaGraphInstantiate(&g->exec, graph, 0) == cudaSuccess;
  if (graph) cudaGraphDestroy(graph);
  cudaGetLastError();
  if (!ok) {
    g->exec = nullptr;
    g->failed = true;  // nothing ran: the caller runs the step as usual
    return KLE_ENOSYS;
  }
  CU(cudaGraphLaunch(g->exec, cx->st));
  return launched();
}

// BF16 MLA caches where the tensor-core attention reads them (the latent widths it takes)
int cu_kv_bf16_ok(const int32_t *c) {
  const int D = c[KLE_CFG_KV_RANK] + c[KLE_CFG_QK_ROPE], Dv = c[KLE_CFG_KV_RANK];
  return D % 8 == 0 && D <= 640 && Dv % 64 == 0 && Dv <= 512;
}

// shapes the CUDA kernels run; the engine's own config checks come first
int cu_supports(const int32_t *c, const int32_t *kinds) {
  bool kda = false, mla = false;
  for (int l = 0; l < c[KLE_CFG_LAYERS]; l++) (kinds[l] == KLE_LAYER_KDA ? kda : mla) = true;
  const int dk = c[KLE_CFG_KDA_HEAD_DIM];
  if (kda && dk != 32 && dk != 64 && dk != 128) return 0;
  if (mla && (c[KLE_CFG_KV_RANK] + c[KLE_CFG_QK_ROPE] > 640 || c[KLE_CFG_KV_RANK] > 512)) return 0;
  if (c[KLE_CFG_EXPERTS] > 1024 || c[KLE_CFG_EXPERTS_PER_TOK] > 64) return 0;
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
  b.alloc_weight = cu_alloc_weight;
  b.release = cu_release;
  b.upload = cu_upload;
  b.download = cu_download;
  b.copy = cu_copy;
  b.copy_n = cu_copy_n;
  b.sync = cu_sync;
  b.mem_info = cu_mem_info;
  b.precision = cu_precision;
  b.synth = cu_synth;
  b.place = cu_place;
  b.experts_table = cu_experts_table;
  b.experts_table_free = cu_experts_table_free;
  b.matmul = cu_matmul;
  b.matmul_n = cu_matmul_n;
  b.embed = cu_embed;
  b.rmsnorm = cu_rmsnorm;
  b.add = cu_add;
  b.add_rmsnorm = cu_add_rmsnorm;
  b.sigmoid = cu_sigmoid;
  b.swiglu = cu_swiglu;
  b.conv_short = cu_conv_short;
  b.kda_gate = cu_kda_gate;
  b.kda_recur = cu_kda_recur;
  b.kda_fused_step = cu_kda_fused_step;
  b.rows_table = cu_rows_table;
  b.kda_fused_rows = cu_kda_fused_rows;
  b.mla_decode_rows = cu_mla_decode_rows;
  b.kv_bf16_ok = cu_kv_bf16_ok;
  b.mla_cache_write = cu_mla_cache_write;
  b.mla_absorb = cu_mla_absorb;
  b.mla_attend = cu_mla_attend;
  b.mla_up_v = cu_mla_up_v;
  b.kv_note_rows = cu_kv_note_rows;
  b.kv_drop_one = cu_kv_drop_one;
  b.moe_route = cu_moe_route;
  b.moe_experts = cu_moe_experts;
  b.moe_experts_shared = cu_moe_experts_shared;
  b.sample = cu_sample;
  b.graph_step = cu_graph_step;
  b.graph_free = cu_graph_free;
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
