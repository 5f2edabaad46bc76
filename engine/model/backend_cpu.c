/*
 * backend_cpu.c: the forward pass's operations on the CPU (wasm and native builds), each a call
 * of kle.h's kernels over host memory. Weights stay in the format of the file.
 */
#include <stdlib.h>
#include <string.h>

#include "../kernels/conv.h"
#include "../kernels/matmul_bf16.h"
#include "../kernels/matmul_q8.h"
#include "engine.h"
#include "pool.h"
#include "synth.h"

struct kle_backend_ctx {
  kle_pool *pool; /* native builds: worker threads, as many as cores by default; wasm: none */
  /* a quantized matmul's activations as int16 codes (and byte codes, kle_q8_qx_elems) and block scales, kept between calls (a
   * fresh buffer per call cost its page faults every time past malloc's mmap threshold) */
  int16_t *qx;
  float *dx;
  uint64_t q_cap, d_cap;
  /* kle_model_precision's BF16: BF16 weights take the activations rounded to BF16, kept here */
  int round_bf16;
  int bf16_prefill; /* and those of a prefill too (kle_bf16r_prefill: where that is faster) */
  uint16_t *xh;
  uint64_t xh_cap;
};

static kle_backend_ctx *cpu_open(void) {
  kle_backend_ctx *cx = calloc(1, sizeof(kle_backend_ctx));
  if (!cx) return NULL;
  cx->pool = kle_pool_create(kle_pool_cores());
  cx->bf16_prefill = kle_bf16r_prefill();
  return cx;
}
static void cpu_close(kle_backend_ctx *cx) {
  if (!cx) return;
  kle_pool_free(cx->pool);
  free(cx->qx);
  free(cx->dx);
  free(cx->xh);
  free(cx);
}

/* buf if it holds n elements of size bytes, else a fresh block (buf then freed; its contents
 * are not kept); NULL when out of memory, buf untouched */
static void *grown_buf(void *buf, uint64_t *cap, uint64_t n, uint64_t size) {
  if (n <= *cap) return buf;
  void *p = kle_host_alloc_n(n, size);
  if (!p) return NULL;
  free(buf);
  *cap = n;
  return p;
}

/* room for T x n_in codes and their scales in the context's buffers */
static int q8_room(kle_backend_ctx *cx, uint64_t codes, uint64_t scales) {
  int16_t *q = grown_buf(cx->qx, &cx->q_cap, codes, sizeof(int16_t));
  if (!q) return KLE_ENOMEM;
  cx->qx = q;
  float *d = grown_buf(cx->dx, &cx->d_cap, scales, sizeof(float));
  if (!d) return KLE_ENOMEM;
  cx->dx = d;
  return KLE_OK;
}
#if KLE_BF16R
/* kle_model_precision: KLE_PRECISION_BF16 rounds the activations of BF16-weight matmuls of up to
 * 3 tokens (decode), and of any number where the processor's BF16 products pay in prefill, to BF16 */
static int cpu_precision(kle_backend_ctx *cx, int mode) {
  if (mode > 0) cx->round_bf16 = mode == KLE_PRECISION_BF16;
  return cx->round_bf16 ? KLE_PRECISION_BF16 : KLE_PRECISION_F32;
}
#endif

static int cpu_threads(kle_backend_ctx *cx, int n) {
  if (n > 0 && n != kle_pool_threads(cx->pool)) {
    kle_pool_free(cx->pool);
    cx->pool = kle_pool_create(n);
  }
  return kle_pool_threads(cx->pool);
}

static void *cpu_host_threads(kle_backend_ctx *cx, int *starts) {
  if (starts) *starts = kle_pool_host_starts(cx->pool);
  return cx->pool;
}

static void *cpu_alloc(kle_backend_ctx *cx, size_t bytes) {
  (void)cx;
  return calloc(1, bytes ? bytes : 1);
}
static void cpu_release(kle_backend_ctx *cx, void *p) {
  (void)cx;
  free(p);
}
static int cpu_copy(kle_backend_ctx *cx, void *dst, const void *src, size_t n) {
  (void)cx;
  memmove(dst, src, n);
  return KLE_OK;
}
static int cpu_sync(kle_backend_ctx *cx) {
  (void)cx;
  return KLE_OK;
}
static int cpu_synth(kle_backend_ctx *cx, void *dst, int fmt, uint64_t n, uint64_t stream, float offset, float scale) {
  (void)cx;
  if (fmt == KLE_W_F32)
    for (uint64_t i = 0; i < n; i++) ((float *)dst)[i] = kle_synth_value(stream, i, offset, scale);
  else if (fmt == KLE_W_BF16)
    for (uint64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = kle_synth_bf16(kle_synth_value(stream, i, offset, scale));
  else if (fmt == KLE_W_Q8_0 && n % KLE_QK == 0)
    kle_synth_q8_0(dst, n, stream, offset, scale);
  else
    return KLE_EINVAL;
  return KLE_OK;
}
static int cpu_place(kle_backend_ctx *cx, kle_tensor *t) {
  (void)cx;
  (void)t;
  return KLE_OK;
}
static int cpu_experts_table(kle_backend_ctx *cx, const kle_tensor *experts, int E, void **handle) {
  (void)cx;
  (void)E;
  *handle = (void *)experts;
  return KLE_OK;
}
static void cpu_experts_table_free(kle_backend_ctx *cx, void *handle) {
  (void)cx;
  (void)handle;
}

/* fn(arg, lo, hi) over [0, n) in chunks of `per`, the chunks spread over the pool's threads (all
 * on the caller below two chunks): element-wise work that would otherwise leave the other threads
 * waiting between the matmuls (a two-thread 105M Q8_0 prefill's second thread spun 19% of the
 * time, while the first quantized activations and ran the SwiGLU and the KDA gates) */
struct par_job {
  void (*fn)(void *, int, int);
  void *arg;
  int n, per;
};
static void par_item(void *a, int i) {
  const struct par_job *j = a;
  const int lo = i * j->per, hi = j->n - lo < j->per ? j->n : lo + j->per;
  j->fn(j->arg, lo, hi);
}
static void par_for(kle_backend_ctx *cx, int n, int per, void (*fn)(void *, int, int), void *arg) {
  const int items = per > 0 ? (n + per - 1) / per : 1;
  if (!cx->pool || items < 2) {
    fn(arg, 0, n);
    return;
  }
  struct par_job j = {fn, arg, n, per};
  kle_pool_run(cx->pool, par_item, &j, items);
}

/* a matmul split by weight rows: every thread takes slices of SLICE_ROWS rows and writes their
 * columns of Y; each output is computed as on one thread, so the result is the same to the bit.
 * Quantized weights' activations are quantized once, before the split. */
#define SLICE_ROWS 64
struct mm_job {
  const kle_tensor *w;
  const float *X;
  float *Y;
  const float *dx;
  const int16_t *qx;
  const uint16_t *xh; /* the activations rounded to BF16 (BF16 precision), or NULL */
  int T, rc;
};
static void mm_slice(void *arg, int i) {
  struct mm_job *j = arg;
  const int r0 = i * SLICE_ROWS, n = j->w->rows - r0 < SLICE_ROWS ? j->w->rows - r0 : SLICE_ROWS;
  const long rb = kle_row_bytes(j->w->fmt, j->w->cols);
  const uint8_t *W = j->w->data + (size_t)rb * r0;
  const int rc = j->qx   ? kle_q8_rows(j->w->fmt, W, j->dx, j->qx, j->Y + r0, j->w->rows, j->T, n, j->w->cols)
                 : j->xh ? kle_bf16r_rows((const uint16_t *)W, j->xh, j->Y + r0, j->w->rows, j->T, n, j->w->cols)
                         : kle_matmul_ld(j->w->fmt, W, j->X, j->Y + r0, j->w->rows, j->T, n, j->w->cols);
  if (rc != KLE_OK) j->rc = rc; /* any failure is the same one (bad shape) */
}

struct quant_job {
  const kle_tensor *w;
  const float *X;
  float *dx;
  int16_t *qx;
  int T;
};
static void quant_rows(void *arg, int t0, int t1) {
  const struct quant_job *q = arg;
  kle_q8_quantize_rows(q->w->fmt, q->X, q->T, t0, t1, q->w->cols, q->dx, q->qx);
}

static void round_rows(void *arg, int t0, int t1) {
  const struct mm_job *j = arg;
  const size_t n = (size_t)j->w->cols;
  kle_bf16_round(j->X + (size_t)t0 * n, (size_t)(t1 - t0) * n, (uint16_t *)j->xh + (size_t)t0 * n);
}

static int cpu_matmul(kle_backend_ctx *cx, const kle_tensor *w, const float *X, float *Y, int T) {
  const int quant = kle_matmul_int8(w->fmt, T);
  struct mm_job j = {w, X, Y, NULL, NULL, NULL, T, KLE_OK};
  /* decode's few tokens, and a prefill's where vdpbf16ps outruns the FMA tiles (kle_bf16r_prefill) */
  if (cx->round_bf16 && w->fmt == KLE_W_BF16 && w->cols % 32 == 0 && (T <= 3 || cx->bf16_prefill)) { /* rounded once, before the split */
    uint16_t *xh = grown_buf(cx->xh, &cx->xh_cap, kle_mul64((uint64_t)T, (uint64_t)w->cols), sizeof(uint16_t));
    if (!xh) return KLE_ENOMEM;
    cx->xh = xh;
    j.xh = xh;
    par_for(cx, T, 8, round_rows, &j);
  }
  if (quant) { /* the activations quantized once (8 tokens a thread's share), into buffers kept between calls */
    KLE_TRY(q8_room(cx, kle_q8_qx_elems((uint64_t)T, (uint64_t)w->cols), kle_mul64((uint64_t)(2 * T), (uint64_t)(w->cols / KLE_QK))));
    struct quant_job q = {w, X, cx->dx, cx->qx, T};
    par_for(cx, T, 8, quant_rows, &q);
    j.dx = cx->dx;
    j.qx = cx->qx;
  }
  const int slices = (w->rows + SLICE_ROWS - 1) / SLICE_ROWS;
  /* below a few hundred thousand multiply-adds, handing out the slices costs more than it saves */
  if (!cx->pool || slices < 2 || (int64_t)T * w->rows * w->cols < (1 << 18))
    return quant  ? kle_q8_rows(w->fmt, w->data, cx->dx, cx->qx, Y, w->rows, T, w->rows, w->cols)
           : j.xh ? kle_bf16r_rows((const uint16_t *)w->data, j.xh, Y, w->rows, T, w->rows, w->cols)
                  : kle_matmul(w->fmt, w->data, X, Y, T, w->rows, w->cols);
  kle_pool_run(cx->pool, mm_slice, &j, slices);
  return j.rc;
}

static int cpu_embed(kle_backend_ctx *cx, const kle_tensor *e, const int32_t *tokens, float *x, int T) {
  (void)cx;
  if (!tokens) return KLE_EINVAL; /* no graph_step here */
  const long rb = kle_row_bytes(e->fmt, e->cols);
  for (int t = 0; t < T; t++)
    KLE_TRY(kle_dequantize(e->fmt, e->data + (size_t)rb * tokens[t], x + (size_t)t * e->cols, e->cols));
  return KLE_OK;
}

static int cpu_rmsnorm(kle_backend_ctx *cx, const float *x, const float *gate, const float *w, float *y, int rows, int D,
                       float eps) {
  (void)cx;
  return gate ? kle_rmsnorm_gated(x, gate, w, y, rows, D, eps) : kle_rmsnorm(x, w, y, rows, D, eps);
}

static int cpu_add(kle_backend_ctx *cx, float *x, const float *y, size_t n) {
  (void)cx;
  for (size_t i = 0; i < n; i++) x[i] += y[i];
  return KLE_OK;
}

static int cpu_sigmoid(kle_backend_ctx *cx, const float *x, float *y, size_t n) {
  (void)cx;
  return kle_sigmoid(x, y, (int)n);
}

struct swiglu_job {
  const float *gate, *up;
  float *out;
};
static void swiglu_part(void *arg, int lo, int hi) {
  const struct swiglu_job *s = arg;
  kle_swiglu(s->gate + lo, s->up + lo, s->out + lo, hi - lo);
}
static int cpu_swiglu(kle_backend_ctx *cx, const float *gate, const float *up, float *out, size_t n) {
  if (n > INT32_MAX) return KLE_EINVAL;
  struct swiglu_job s = {gate, up, out};
  par_for(cx, (int)n, 1 << 15, swiglu_part, &s); /* 32K values a share: a decode step's stay on one thread */
  return KLE_OK;
}

struct conv_job {
  const float *x, *wT, *tail;
  float *y;
  int T, C, W, rc;
};
static void conv_rows(void *arg, int t0, int t1) {
  struct conv_job *j = arg;
  if (kle_conv_short_rows(j->x, j->wT, j->tail, j->y, j->T, j->C, j->W, 1, t0, t1) != KLE_OK) j->rc = KLE_EINVAL;
}
/* a prefill's tokens 16 a share across the pool, then the tail rolled once (widths that are not a
 * multiple of 4 take the kernel's scalar path whole) */
static int cpu_conv_short(kle_backend_ctx *cx, const float *x, const float *wT, float *tail, float *y, int T, int C,
                          int W) {
  if (C % 4) return kle_conv_short(x, wT, tail, y, T, C, W, 1);
  struct conv_job j = {x, wT, tail, y, T, C, W, KLE_OK};
  par_for(cx, T, 16, conv_rows, &j);
  KLE_TRY(j.rc);
  kle_conv_short_tail(x, tail, T, C, W);
  return KLE_OK;
}

struct gate_job {
  const float *x, *A_log, *dt_bias;
  float *g;
  int H, Kg, rc;
  float lower_bound;
};
static void gate_rows(void *arg, int t0, int t1) {
  struct gate_job *j = arg;
  const size_t row = (size_t)j->H * j->Kg;
  if (kle_kda_gate(j->x + row * t0, j->A_log, j->dt_bias, j->g + row * t0, t1 - t0, j->H, j->Kg, j->lower_bound) != KLE_OK) j->rc = KLE_EINVAL;
}
static int cpu_kda_gate(kle_backend_ctx *cx, const float *x, const float *A_log, const float *dt_bias, float *g, int T,
                        int H, int K, int Kg, float lower_bound) {
  struct gate_job j = {x, A_log, dt_bias, g, H, Kg, KLE_OK, lower_bound};
  par_for(cx, T, 16, gate_rows, &j);
  KLE_TRY(j.rc);
  if (Kg == K) return KLE_OK;
  /* one decay per head, [T*H] at the front of g: spread over the head's K channels, last head
   * first so no value is overwritten before it is read */
  for (size_t j = (size_t)T * H; j-- > 0;) {
    const float v = g[j];
    for (int i = K - 1; i >= 0; i--) g[j * K + i] = v;
  }
  return KLE_OK;
}

/* The KDA heads are independent recurrences: threads take whole heads, each computed exactly as
 * on one thread (a chunked prefill's head is gathered into contiguous rows, run as a one-head
 * chunk, and its output scattered back), so the result is the same to the bit. */
struct kda_job {
  float *S;
  const float *q, *k, *v, *g, *beta;
  float *o;
  int T, H, K, V, rc;
  float scale;
};
static void kda_head(void *arg, int h) {
  struct kda_job *j = arg;
  const size_t K = (size_t)j->K, V = (size_t)j->V, H = (size_t)j->H, T = (size_t)j->T;
  float *Sh = j->S + (size_t)h * K * V;
  int rc;
  if (j->T == 1) {
    rc = kle_kda_step(Sh, j->q + h * K, j->k + h * K, j->v + h * V, j->g + h * K, j->beta + h, j->o + h * V, 1, j->K, j->V,
                      j->scale, KLE_KDA_L2NORM_QK);
  } else {
    float *buf = kle_host_alloc_n(kle_mul64(T, 3 * K + 2 * V + 1), sizeof(float));
    if (!buf) {
      j->rc = KLE_ENOMEM;
      return;
    }
    float *q = buf, *k = q + T * K, *g = k + T * K, *v = g + T * K, *o = v + T * V, *beta = o + T * V;
    for (size_t t = 0; t < T; t++) {
      memcpy(q + t * K, j->q + (t * H + h) * K, sizeof(float) * K);
      memcpy(k + t * K, j->k + (t * H + h) * K, sizeof(float) * K);
      memcpy(g + t * K, j->g + (t * H + h) * K, sizeof(float) * K);
      memcpy(v + t * V, j->v + (t * H + h) * V, sizeof(float) * V);
      beta[t] = j->beta[t * H + h];
    }
    rc = kle_kda_chunk(Sh, q, k, v, g, beta, o, j->T, 1, j->K, j->V, j->scale, KLE_KDA_L2NORM_QK, 0);
    for (size_t t = 0; rc == KLE_OK && t < T; t++) memcpy(j->o + (t * H + h) * V, o + t * V, sizeof(float) * V);
    free(buf);
  }
  if (rc != KLE_OK) j->rc = rc;
}

static int cpu_kda_recur(kle_backend_ctx *cx, float *S, const float *q, const float *k, const float *v, const float *g,
                         const float *beta, float *o, int T, int H, int K, int V, float scale) {
  /* below ~64K state elements touched, handing the heads out costs more than it saves */
  if (cx->pool && H > 1 && (int64_t)T * H * K * V >= (1 << 16)) {
    struct kda_job j = {S, q, k, v, g, beta, o, T, H, K, V, KLE_OK, scale};
    kle_pool_run(cx->pool, kda_head, &j, H);
    return j.rc;
  }
  if (T == 1) return kle_kda_step(S, q, k, v, g, beta, o, H, K, V, scale, KLE_KDA_L2NORM_QK);
  return kle_kda_chunk(S, q, k, v, g, beta, o, T, H, K, V, scale, KLE_KDA_L2NORM_QK, 0);
}

/* the CPU keeps its caches in f32 (no kv_bf16_ok): fmt is always KLE_W_F32 here */
static int cpu_mla_cache_write(kle_backend_ctx *cx, const float *kv, const float *w, void *cache, int fmt, int L0, int T,
                               int R, int rope, float eps) {
  (void)cx;
  if (fmt != KLE_W_F32 || L0 < 0) return KLE_EINVAL; /* no graph_step here: lengths are the host's */
  const size_t Dc = (size_t)R + rope;
  float *rows = (float *)cache + (size_t)L0 * Dc;
  for (int t = 0; t < T; t++) {
    KLE_TRY(kle_rmsnorm(kv + t * Dc, w, rows + t * Dc, 1, R, eps));
    memcpy(rows + t * Dc + R, kv + t * Dc + R, sizeof(float) * rope);
  }
  return KLE_OK;
}

struct absorb_job {
  const float *W_uk, *q;
  float *qlat;
  int H, nope, rope, R, rc;
};
static void absorb_rows(void *arg, int t0, int t1) {
  struct absorb_job *j = arg;
  const size_t Dq = (size_t)j->nope + j->rope, Dc = (size_t)j->R + j->rope;
  float *qn = malloc(sizeof(float) * (size_t)j->H * j->nope);
  if (!qn) {
    j->rc = KLE_ENOMEM;
    return;
  }
  for (int t = t0; t < t1; t++) {
    const float *qt = j->q + (size_t)t * j->H * Dq;
    float *ql = j->qlat + (size_t)t * j->H * Dc;
    for (int h = 0; h < j->H; h++) memcpy(qn + (size_t)h * j->nope, qt + h * Dq, sizeof(float) * j->nope);
    if (kle_mla_absorb_q(j->W_uk, qn, ql, j->H, j->nope, j->R, (int)Dc) != KLE_OK) j->rc = KLE_EINVAL;
    for (int h = 0; h < j->H; h++) memcpy(ql + h * Dc + j->R, qt + h * Dq + j->nope, sizeof(float) * j->rope);
  }
  free(qn);
}
/* a prefill's tokens 8 a share across the pool (each token's absorption is its own) */
static int cpu_mla_absorb(kle_backend_ctx *cx, const float *W_uk, const float *q, float *qlat, int T, int H, int nope,
                          int rope, int R) {
  struct absorb_job j = {W_uk, q, qlat, H, nope, rope, R, KLE_OK};
  par_for(cx, T, 8, absorb_rows, &j);
  return j.rc;
}

/* MLA attention split across threads by what the kernels compute independently: a decode's
 * heads (each reads the whole cache: the decode is bound by arithmetic, not by the cache read),
 * a prefill's queries; each part exactly as on one thread */
struct mla_job {
  const float *q, *cache;
  int L0, T, H, D, Dv;
  float scale;
  float *out;
  int rc;
};
static void mla_part(void *arg, int i) {
  struct mla_job *j = arg;
  int rc;
  if (j->T == 1) {
    rc = kle_mla_decode(j->q + (size_t)i * j->D, j->cache, j->L0 + 1, 1, j->D, j->Dv, j->scale, j->out + (size_t)i * j->Dv, NULL);
  } else {
    const int t0 = 8 * i, n = j->T - t0 < 8 ? j->T - t0 : 8;
    rc = kle_mla_prefill(j->q + (size_t)t0 * j->H * j->D, j->cache, j->L0 + t0, n, j->H, j->D, j->Dv, j->scale,
                         j->out + (size_t)t0 * j->H * j->Dv);
  }
  if (rc != KLE_OK) j->rc = rc;
}

static int cpu_mla_attend(kle_backend_ctx *cx, const float *qlat, const void *cache_, int fmt, int L0, int T, int H, int D,
                          int Dv, float scale, float *out, float *score, float decay) {
  if (fmt != KLE_W_F32 || L0 < 0) return KLE_EINVAL;
  const float *cache = cache_;
  if (score) {
    for (int t = 0; t < T; t++)
      KLE_TRY(kle_mla_decode_scored(qlat + (size_t)t * H * D, cache, L0 + t + 1, H, D, Dv, scale, out + (size_t)t * H * Dv,
                                    score, decay));
    return KLE_OK;
  }
  const int64_t work = (int64_t)T * H * (L0 + T) * (D + Dv);
  if (cx->pool && work >= (1 << 18)) {
    struct mla_job j = {qlat, cache, L0, T, H, D, Dv, scale, out, KLE_OK};
    /* a decode's heads, or a prefill's queries in blocks of 8 */
    kle_pool_run(cx->pool, mla_part, &j, T == 1 ? H : (T + 7) / 8);
    return j.rc;
  }
  if (T == 1) return kle_mla_decode(qlat, cache, L0 + 1, H, D, Dv, scale, out, NULL);
  return kle_mla_prefill(qlat, cache, L0, T, H, D, Dv, scale, out);
}

static int cpu_kv_note_rows(kle_backend_ctx *cx, uint32_t *info, int T, uint32_t pos0, uint32_t flag) {
  (void)cx;
  for (int t = 0; t < T; t++) info[t] = (pos0 + (uint32_t)t) | flag;
  return KLE_OK;
}

static int cpu_mla_up_v(kle_backend_ctx *cx, const float *W_uv, const float *o, float *y, int T, int H, int vh, int R) {
  (void)cx;
  for (int t = 0; t < T; t++) KLE_TRY(kle_mla_up_v(W_uv, o + (size_t)t * H * R, y + (size_t)t * H * vh, H, vh, R));
  return KLE_OK;
}

static int cpu_moe_route(kle_backend_ctx *cx, const float *logits, const float *bias, int T, int E, int topk, int n_group,
                         int topk_group, int act, int renorm, float scale, int32_t *idx, float *w) {
  (void)cx;
  for (int t = 0; t < T; t++)
    KLE_TRY(kle_moe_route(logits + (size_t)t * E, bias, E, topk, n_group, topk_group, act, renorm, scale,
                          idx + (size_t)t * topk, w + (size_t)t * topk));
  return KLE_OK;
}

/* one matmul per expert over the tokens routed to it */
static int cpu_moe_experts(kle_backend_ctx *cx, const void *experts, const int32_t *idx, const float *w, const float *h,
                           float *y, int T, int K, int D, int MI, float *scratch) {
  const kle_tensor *ex = experts;
  float *xs = scratch, *gate = xs + (size_t)T * D, *up = gate + (size_t)T * MI, *out = up + (size_t)T * MI;
  int32_t *rows = (int32_t *)(out + (size_t)T * D);
  memset(y, 0, sizeof(float) * (size_t)T * D);
  int E = 0;
  for (int i = 0; i < T * K; i++) E = idx[i] + 1 > E ? idx[i] + 1 : E;
  for (int e = 0; e < E; e++) {
    int cnt = 0;
    for (int i = 0; i < T * K; i++)
      if (idx[i] == e) {
        rows[cnt] = i;
        memcpy(xs + (size_t)cnt * D, h + (size_t)(i / K) * D, sizeof(float) * D);
        cnt++;
      }
    if (!cnt) continue;
    const kle_tensor *t = ex + (size_t)e * 3;
    KLE_TRY(cpu_matmul(cx, &t[0], xs, gate, cnt));
    KLE_TRY(cpu_matmul(cx, &t[1], xs, up, cnt));
    KLE_TRY(kle_swiglu(gate, up, gate, cnt * MI));
    KLE_TRY(cpu_matmul(cx, &t[2], gate, out, cnt));
    for (int r = 0; r < cnt; r++) {
      const int i = rows[r];
      const float wi = w[i], *er = out + (size_t)r * D;
      float *yt = y + (size_t)(i / K) * D;
      for (int d = 0; d < D; d++) yt[d] += wi * er[d];
    }
  }
  return KLE_OK;
}

static const kle_backend cpu_backend = {
    .name = "cpu",
    .host_memory = 1,
    .batch = KLE_PREFILL_BATCH,
    .supports = NULL,
    .open = cpu_open,
    .close = cpu_close,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .alloc_weight = NULL,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy = cpu_copy,
    .sync = cpu_sync,
    .mem_info = NULL,
    .threads = cpu_threads,
#if KLE_BF16R
    .precision = cpu_precision,
#endif
    .host_threads = cpu_host_threads,
    .synth = cpu_synth,
    .place = cpu_place,
    .experts_table = cpu_experts_table,
    .experts_table_free = cpu_experts_table_free,
    .matmul = cpu_matmul,
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .add = cpu_add,
    .add_rmsnorm = NULL,
    .sigmoid = cpu_sigmoid,
    .swiglu = cpu_swiglu,
    .conv_short = cpu_conv_short,
    .kda_gate = cpu_kda_gate,
    .kda_recur = cpu_kda_recur,
    .kda_fused_step = NULL,
    .mla_cache_write = cpu_mla_cache_write,
    .mla_absorb = cpu_mla_absorb,
    .mla_attend = cpu_mla_attend,
    .mla_up_v = cpu_mla_up_v,
    .kv_note_rows = cpu_kv_note_rows,
    .moe_route = cpu_moe_route,
    .moe_experts = cpu_moe_experts,
};

const kle_backend *kle_backend_get(void) { return &cpu_backend; }
