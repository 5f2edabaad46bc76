// engine.cu: the engine's CUDA backend. It implements kle.h's engine API (model, session,
// forward, state blob) with weights, states and caches in device memory, so the TypeScript
// engine, the server and the router drive it exactly like the wasm and native builds.
//
// The host engine (wasm/engine/model.c, session.c) is linked in under kle_host_* names
// (build.mjs renames them when it compiles those files): it still validates the config and
// every tensor's shape, computes the model fingerprint and the derived weights (transposed conv
// taps, W_uk / W_uv split per head), and reads and writes the versioned state blob. This file
// uploads the finished tensors as f32 (quantized formats are expanded: the kernels here are f32
// only), frees the host copies, and runs the forward pass with the CUDA kernels. Because the
// fingerprint and the blob format are the host engine's, a session saved at the edge loads here
// and the other way round.
#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <new>
#include <vector>

extern "C" {
#include "../../wasm/engine/engine.h"
}
#include "../include/kle_cuda.h"
#include "../include/kle_cuda_node.h"
#include "ops.cuh"

extern "C" {
kle_model *kle_host_model_create(const int32_t *cfg, int n_cfg, const float *cfgf, int n_cfgf);
void kle_host_model_free(kle_model *m);
int kle_host_model_tensor_expect(kle_model *m, int role, int layer, int expert, int32_t *out);
kle_addr kle_host_model_tensor(kle_model *m, int role, int layer, int expert, int fmt, int rows, int cols);
int kle_host_model_finalize(kle_model *m);
kle_session *kle_host_session_create(kle_model *m);
void kle_host_session_free(kle_session *s);
long kle_host_session_state_size(kle_session *s);
int kle_host_session_state_save(kle_session *s, uint8_t *dst, long n);
int kle_host_session_state_load(kle_session *s, const uint8_t *src, long n);
}

// Tokens per prefill batch: larger than the CPU's 64 so the matmuls have enough rows to keep the
// GPU busy; the result does not depend on it beyond float rounding.
#define CUDA_PREFILL_BATCH 512

#define TRY(x)                                                                                     \
  do {                                                                                             \
    int rc_ = (x);                                                                                 \
    if (rc_ != KLE_OK) return rc_;                                                                 \
  } while (0)
#define CU(x)                                                                                      \
  do {                                                                                             \
    if ((x) != cudaSuccess) return KLE_EDEVICE;                                                    \
  } while (0)

namespace {

struct CudaModel {
  kle_model *host = nullptr;
  std::vector<float *> t;         // [(L + 1) * KLE_T_COUNT], row 0 the global tensors
  std::vector<float *> experts;   // [L * E * 3]
  std::vector<float **> exp_tab;  // [L]: device array of the layer's E * 3 expert pointers
  std::vector<float *> conv_t, w_uk, w_uv;
  long dev_bytes = 0;
  cudaStream_t st = nullptr;
  bool ready = false;
  const int32_t *c() const { return host->cfg; }
  float eps() const { return host->cfgf[KLE_CFGF_RMS_EPS]; }
  int L() const { return host->cfg[KLE_CFG_LAYERS]; }
  const float *w(int role, int layer) const { return t[(size_t)(layer + 1) * KLE_T_COUNT + role]; }
};

struct CudaSession {
  CudaModel *m = nullptr;
  int pos = 0, cap = 0, has_logits = 0;
  std::vector<float *> kda_state, conv_tail, mla_cache;
  float *logits_host = nullptr, *logits_dev = nullptr, *logits_all = nullptr;
  void *arena = nullptr;
  float *x, *h, *y, *a[7], *small, *route_w, *moe_g, *moe_u, *moe_y;
  int32_t *tok, *route_idx;
  void *ws = nullptr;
  long ws_bytes = 0;
};

CudaModel *CM(kle_model *m) { return reinterpret_cast<CudaModel *>(m); }
CudaSession *CS(kle_session *s) { return reinterpret_cast<CudaSession *>(s); }

// shapes the CUDA kernels run; kle_model_create refuses the rest (the host engine's checks come first)
bool cuda_supported(const int32_t *c, const int32_t *kinds) {
  bool kda = false, mla = false;
  for (int l = 0; l < c[KLE_CFG_LAYERS]; l++) (kinds[l] == KLE_LAYER_KDA ? kda : mla) = true;
  const int dk = c[KLE_CFG_KDA_HEAD_DIM];
  if (kda && dk != 32 && dk != 64 && dk != 128) return false;
  if (mla && (c[KLE_CFG_KV_RANK] + c[KLE_CFG_QK_ROPE] > 640 || c[KLE_CFG_KV_RANK] > 512)) return false;
  if (c[KLE_CFG_EXPERTS] > 1024) return false;
  return true;
}

size_t per_token_width(const int32_t *c) {
  const size_t HK = (size_t)c[KLE_CFG_KDA_HEADS] * c[KLE_CFG_KDA_HEAD_DIM];
  const size_t Hm = (size_t)c[KLE_CFG_MLA_HEADS], Dc = (size_t)c[KLE_CFG_KV_RANK] + c[KLE_CFG_QK_ROPE];
  const size_t cand[] = {HK, Hm * ((size_t)c[KLE_CFG_QK_NOPE] + c[KLE_CFG_QK_ROPE]), Hm * Dc, Hm * (size_t)c[KLE_CFG_V_HEAD], Dc,
                         (size_t)c[KLE_CFG_EXPERTS], (size_t)c[KLE_CFG_INTER],
                         (size_t)c[KLE_CFG_MOE_INTER] * (c[KLE_CFG_SHARED_EXPERTS] > 1 ? c[KLE_CFG_SHARED_EXPERTS] : 1),
                         (size_t)c[KLE_CFG_HIDDEN]};
  size_t w = 0;
  for (size_t v : cand) w = v > w ? v : w;
  return w;
}

// a host tensor as f32 in device memory; the host bytes are freed once copied
int upload(CudaModel *cm, kle_tensor *t, float **out) {
  *out = nullptr;
  if (!t->data) return KLE_OK;
  const size_t n = (size_t)t->rows * t->cols;
  float *tmp = (float *)malloc(sizeof(float) * (n ? n : 1));
  if (!tmp) return KLE_ENOMEM;
  const long rb = kle_row_bytes(t->fmt, t->cols);
  for (int r = 0; r < t->rows; r++) kle_dequantize(t->fmt, t->data + (size_t)rb * r, tmp + (size_t)r * t->cols, t->cols);
  float *d = nullptr;
  const bool ok = cudaMalloc(&d, sizeof(float) * (n ? n : 1)) == cudaSuccess &&
                  cudaMemcpy(d, tmp, sizeof(float) * n, cudaMemcpyHostToDevice) == cudaSuccess;
  free(tmp);
  if (!ok) {
    cudaFree(d);
    return KLE_EDEVICE;
  }
  cm->dev_bytes += (long)(sizeof(float) * n);
  free(t->data);
  t->data = nullptr;
  *out = d;
  return KLE_OK;
}

int upload_raw(CudaModel *cm, const float *src, size_t n, float **out) {
  *out = nullptr;
  if (!src) return KLE_OK;
  CU(cudaMalloc(out, sizeof(float) * n));
  CU(cudaMemcpy(*out, src, sizeof(float) * n, cudaMemcpyHostToDevice));
  cm->dev_bytes += (long)(sizeof(float) * n);
  return KLE_OK;
}

int upload_all(CudaModel *cm) {
  kle_model *m = cm->host;
  const int L = cm->L(), E = m->cfg[KLE_CFG_EXPERTS];
  for (size_t i = 0; i < cm->t.size(); i++) TRY(upload(cm, &m->t[i], &cm->t[i]));
  for (size_t i = 0; i < cm->experts.size(); i++) TRY(upload(cm, &m->experts[i], &cm->experts[i]));
  const int32_t *c = m->cfg;
  const size_t HK = (size_t)c[KLE_CFG_KDA_HEADS] * c[KLE_CFG_KDA_HEAD_DIM];
  for (int l = 0; l < L; l++) {
    if (m->layer_kind[l] == KLE_LAYER_KDA) {
      for (int i = 0; i < 3; i++) TRY(upload_raw(cm, m->conv_t[l * 3 + i], HK * c[KLE_CFG_CONV], &cm->conv_t[l * 3 + i]));
    } else {
      const size_t Hm = c[KLE_CFG_MLA_HEADS], R = c[KLE_CFG_KV_RANK];
      TRY(upload_raw(cm, m->w_uk[l], Hm * c[KLE_CFG_QK_NOPE] * R, &cm->w_uk[l]));
      TRY(upload_raw(cm, m->w_uv[l], Hm * c[KLE_CFG_V_HEAD] * R, &cm->w_uv[l]));
    }
    if (kle_layer_is_moe(m, l)) {
      CU(cudaMalloc(&cm->exp_tab[l], sizeof(float *) * E * 3));
      CU(cudaMemcpy(cm->exp_tab[l], &cm->experts[(size_t)l * E * 3], sizeof(float *) * E * 3, cudaMemcpyHostToDevice));
    }
  }
  return KLE_OK;
}

// ------------------------------------------------------------------ forward
int mm(CudaSession *s, int role, int layer, const float *X, float *Y, int T) {
  const kle_tensor *ht = kle_tensor_at(s->m->host, role, layer);
  kle_ops::matmul(s->m->w(role, layer), X, Y, T, ht->rows, ht->cols, s->m->st);
  return KLE_OK;
}

int ensure_ws(CudaSession *s, long bytes) {
  if (bytes <= s->ws_bytes) return KLE_OK;
  cudaFree(s->ws);  // synchronizes: no kernel still reads the old workspace
  s->ws = nullptr;
  s->ws_bytes = 0;
  const long want = bytes + bytes / 4;
  CU(cudaMalloc(&s->ws, want));
  s->ws_bytes = want;
  return KLE_OK;
}

// a gate projection: one full-rank matrix, or the low-rank pair through s->small
int gate_proj(CudaSession *s, int full, int which_a, int which_b, int l, const float *h, float *out, int T) {
  if (full) return mm(s, which_b, l, h, out, T);
  TRY(mm(s, which_a, l, h, s->small, T));
  return mm(s, which_b, l, s->small, out, T);
}

int kda_layer(CudaSession *s, int l, const float *h, float *y, int T) {
  CudaModel *m = s->m;
  const int32_t *c = m->c();
  const int H = c[KLE_CFG_KDA_HEADS], dk = c[KLE_CFG_KDA_HEAD_DIM], HK = H * dk, W = c[KLE_CFG_CONV];
  const int full = c[KLE_CFG_FULL_RANK_GATE];
  const float lb = m->host->cfgf[KLE_CFGF_GATE_LOWER_BOUND];
  cudaStream_t st = m->st;
  float *q = s->a[3], *k = s->a[4], *v = s->a[5], *o = s->a[6], *g = s->a[1], *beta = s->a[2], *tmp = s->a[0];
  const float scale = 1.0f / sqrtf((float)dk);
  if (T == 1 && (dk == 64 || dk == 128) && W >= 1 && W <= 16) {
    // decode: the projections, then everything between them and the output projection in one
    // kernel (kle_cuda_kda_layer_step); g's buffer takes the output gate's projection. The step
    // is launched overlapped: it streams the layer's state and conv windows while that last
    // projection (a matvec, which writes none of them) finishes
    for (int i = 0; i < 3; i++) TRY(mm(s, KLE_T_KDA_Q + i, l, h, s->a[3 + i], 1));
    TRY(gate_proj(s, full, KLE_T_KDA_F_A, KLE_T_KDA_F_B, l, h, tmp, 1));
    TRY(mm(s, KLE_T_KDA_BETA, l, h, beta, 1));
    TRY(gate_proj(s, full, KLE_T_KDA_G_A, KLE_T_KDA_G_B, l, h, g, 1));
    kle_cuda_kda_layer_args a = {q, k, v, m->conv_t[l * 3], m->conv_t[l * 3 + 1], m->conv_t[l * 3 + 2],
                                 s->conv_tail[l * 3], s->conv_tail[l * 3 + 1], s->conv_tail[l * 3 + 2],
                                 tmp, m->w(KLE_T_KDA_A_LOG, l), m->w(KLE_T_KDA_DT_BIAS, l), lb, beta,
                                 g, m->w(KLE_T_KDA_O_NORM, l), m->eps(), s->kda_state[l], o, KLE_CUDA_KDA_OVERLAP};
    TRY(kle_cuda_kda_layer_step(&a, 1, H, dk, dk, W, scale, st));
    return mm(s, KLE_T_KDA_O, l, o, y, 1);
  }
  float *outs[3] = {q, k, v};
  for (int i = 0; i < 3; i++) {
    TRY(mm(s, KLE_T_KDA_Q + i, l, h, tmp, T));
    kle_ops::conv_short(tmp, m->conv_t[l * 3 + i], s->conv_tail[l * 3 + i], outs[i], T, HK, W, st);
  }
  TRY(gate_proj(s, full, KLE_T_KDA_F_A, KLE_T_KDA_F_B, l, h, tmp, T));
  kle_ops::kda_gate(tmp, m->w(KLE_T_KDA_A_LOG, l), m->w(KLE_T_KDA_DT_BIAS, l), g, T, H, dk, lb, st);
  TRY(mm(s, KLE_T_KDA_BETA, l, h, beta, T));
  kle_ops::sigmoid(beta, beta, (long)T * H, st);
  if (T >= 64) {  // a whole chunk or more: the chunk form's parallel work pays for itself
    const long wb = kle_cuda_kda_chunk_workspace_bytes(T, H, dk, dk);
    TRY(ensure_ws(s, wb));
    TRY(kle_cuda_kda_chunk(s->kda_state[l], q, k, v, g, beta, o, T, H, dk, dk, scale, 1, s->ws, s->ws_bytes, st));
  } else {
    TRY(kle_cuda_kda_recurrent(s->kda_state[l], q, k, v, g, beta, o, T, H, dk, dk, scale, 1, st));
  }
  TRY(gate_proj(s, full, KLE_T_KDA_G_A, KLE_T_KDA_G_B, l, h, tmp, T));
  kle_ops::rmsnorm(o, tmp, m->w(KLE_T_KDA_O_NORM, l), o, T * H, dk, m->eps(), st);
  return mm(s, KLE_T_KDA_O, l, o, y, T);
}

int mla_layer(CudaSession *s, int l, const float *h, float *y, int T) {
  CudaModel *m = s->m;
  const int32_t *c = m->c();
  const int Hm = c[KLE_CFG_MLA_HEADS], nope = c[KLE_CFG_QK_NOPE], rope = c[KLE_CFG_QK_ROPE];
  const int vh = c[KLE_CFG_V_HEAD], R = c[KLE_CFG_KV_RANK], Dc = R + rope, Dq = nope + rope;
  cudaStream_t st = m->st;
  float *qf = s->a[0], *kv = s->a[1], *qlat = s->a[3], *olat = s->a[4], *ov = s->a[5];
  TRY(mm(s, KLE_T_MLA_Q, l, h, qf, T));
  TRY(mm(s, KLE_T_MLA_KV_A, l, h, kv, T));
  float *cache = s->mla_cache[l];
  kle_ops::mla_cache_write(kv, m->w(KLE_T_MLA_KV_NORM, l), cache + (size_t)s->pos * Dc, T, R, rope, m->eps(), st);
  kle_ops::mla_absorb(m->w_uk[l], qf, qlat, T, Hm, nope, rope, R, st);
  const float scale = 1.0f / sqrtf((float)Dq);
  const int L = s->pos + T;
  // decode and prefill alike: the tensor-core kernel where the latent widths allow
  TRY(ensure_ws(s, kle_cuda_mla_attend_workspace_bytes(L, T, Hm, R)));
  TRY(kle_cuda_mla_attend(qlat, cache, s->pos, T, Hm, Dc, R, scale, olat, s->ws, s->ws_bytes, st));
  kle_ops::mla_up_v(m->w_uv[l], olat, ov, T, Hm, vh, R, st);
  return mm(s, KLE_T_MLA_O, l, ov, y, T);
}

int swiglu_mlp(CudaSession *s, int rg, int ru, int rd, int l, const float *h, float *y, int T) {
  const kle_tensor *g = kle_tensor_at(s->m->host, rg, l);
  TRY(mm(s, rg, l, h, s->a[0], T));
  TRY(mm(s, ru, l, h, s->a[1], T));
  kle_ops::swiglu(s->a[0], s->a[1], s->a[2], (long)T * g->rows, s->m->st);
  return mm(s, rd, l, s->a[2], y, T);
}

int moe_layer(CudaSession *s, int l, const float *h, float *y, int T) {
  CudaModel *m = s->m;
  const int32_t *c = m->c();
  const int D = c[KLE_CFG_HIDDEN], E = c[KLE_CFG_EXPERTS], K = c[KLE_CFG_EXPERTS_PER_TOK], MI = c[KLE_CFG_MOE_INTER];
  cudaStream_t st = m->st;
  TRY(mm(s, KLE_T_MOE_ROUTER, l, h, s->a[0], T));
  const int renorm = c[KLE_CFG_RENORM] && K > 1;  // as forward.c: a single choice keeps its weight
  kle_ops::moe_route(s->a[0], m->w(KLE_T_MOE_BIAS, l), T, E, K, c[KLE_CFG_N_GROUP], c[KLE_CFG_TOPK_GROUP],
                     c[KLE_CFG_ROUTER_ACT], renorm, m->host->cfgf[KLE_CFGF_ROUTED_SCALE], s->route_idx, s->route_w, st);
  const int P = T * K;
  const float *const *tab = m->exp_tab[l];
  kle_ops::expert_matvec(tab, 0, s->route_idx, h, K, s->moe_g, P, MI, D, st);
  kle_ops::expert_matvec(tab, 1, s->route_idx, h, K, s->moe_u, P, MI, D, st);
  kle_ops::swiglu(s->moe_g, s->moe_u, s->moe_g, (long)P * MI, st);
  kle_ops::expert_matvec(tab, 2, s->route_idx, s->moe_g, 1, s->moe_y, P, D, MI, st);
  kle_ops::moe_combine(s->moe_y, s->route_w, y, T, K, D, 0, st);
  if (c[KLE_CFG_SHARED_EXPERTS] > 0) {
    TRY(swiglu_mlp(s, KLE_T_SHEXP_GATE, KLE_T_SHEXP_UP, KLE_T_SHEXP_DOWN, l, h, s->a[4], T));
    kle_ops::add(y, s->a[4], (long)T * D, st);
  }
  return KLE_OK;
}

int lm_head(CudaSession *s, const float *x, float *logits, int T) {
  CudaModel *m = s->m;
  const int D = m->c()[KLE_CFG_HIDDEN], V = m->c()[KLE_CFG_VOCAB];
  const float *head = m->w(KLE_T_LM_HEAD, -1) ? m->w(KLE_T_LM_HEAD, -1) : m->w(KLE_T_TOK_EMBD, -1);
  kle_ops::rmsnorm(x, nullptr, m->w(KLE_T_OUT_NORM, -1), s->h, T, D, m->eps(), m->st);
  kle_ops::matmul(head, s->h, logits, T, V, D, m->st);
  return KLE_OK;
}

size_t mla_row(const int32_t *c) { return (size_t)c[KLE_CFG_KV_RANK] + c[KLE_CFG_QK_ROPE]; }

// grows every MLA cache to at least `need` rows, keeping the first pos rows
int reserve(CudaSession *s, int need) {
  if (need <= s->cap) return KLE_OK;
  int cap = s->cap ? s->cap : 64;
  while (cap < need) cap = cap > (1 << 29) ? need : cap * 2;
  const kle_model *hm = s->m->host;
  const size_t Dc = mla_row(hm->cfg);
  for (int l = 0; l < s->m->L(); l++) {
    if (hm->layer_kind[l] != KLE_LAYER_MLA) continue;
    float *p = nullptr;
    CU(cudaMalloc(&p, sizeof(float) * Dc * cap));
    if (s->pos && cudaMemcpy(p, s->mla_cache[l], sizeof(float) * Dc * s->pos, cudaMemcpyDeviceToDevice) != cudaSuccess) {
      cudaFree(p);
      return KLE_EDEVICE;
    }
    cudaFree(s->mla_cache[l]);
    s->mla_cache[l] = p;
  }
  s->cap = cap;
  return KLE_OK;
}

int forward(CudaSession *s, const int32_t *tokens, int n, float *logits, int all) {
  CudaModel *m = s->m;
  const int32_t *c = m->c();
  const int D = c[KLE_CFG_HIDDEN], V = c[KLE_CFG_VOCAB], L = m->L();
  if (n <= 0 || !tokens || n > (1 << 30) - s->pos) return KLE_EINVAL;
  for (int i = 0; i < n; i++)
    if (tokens[i] < 0 || tokens[i] >= V) return KLE_EINVAL;
  TRY(reserve(s, s->pos + n));
  cudaStream_t st = m->st;
  for (int off = 0; off < n; off += CUDA_PREFILL_BATCH) {
    const int T = n - off < CUDA_PREFILL_BATCH ? n - off : CUDA_PREFILL_BATCH;
    CU(cudaMemcpyAsync(s->tok, tokens + off, sizeof(int32_t) * T, cudaMemcpyHostToDevice, st));
    kle_ops::embed(m->w(KLE_T_TOK_EMBD, -1), s->tok, s->x, T, D, st);
    for (int l = 0; l < L; l++) {
      kle_ops::rmsnorm(s->x, nullptr, m->w(KLE_T_ATTN_NORM, l), s->h, T, D, m->eps(), st);
      TRY(m->host->layer_kind[l] == KLE_LAYER_KDA ? kda_layer(s, l, s->h, s->y, T) : mla_layer(s, l, s->h, s->y, T));
      kle_ops::add(s->x, s->y, (long)T * D, st);
      kle_ops::rmsnorm(s->x, nullptr, m->w(KLE_T_FFN_NORM, l), s->h, T, D, m->eps(), st);
      if (kle_layer_is_moe(m->host, l))
        TRY(moe_layer(s, l, s->h, s->y, T));
      else
        TRY(swiglu_mlp(s, KLE_T_FFN_GATE, KLE_T_FFN_UP, KLE_T_FFN_DOWN, l, s->h, s->y, T));
      kle_ops::add(s->x, s->y, (long)T * D, st);
    }
    s->pos += T;
    if (logits && all) {
      TRY(lm_head(s, s->x, s->logits_all, T));
      CU(cudaMemcpyAsync(logits + (size_t)off * V, s->logits_all, sizeof(float) * T * V, cudaMemcpyDeviceToHost, st));
    }
    if (off + T == n) {
      TRY(lm_head(s, s->x + (size_t)(T - 1) * D, s->logits_dev, 1));
      CU(cudaMemcpyAsync(s->logits_host, s->logits_dev, sizeof(float) * V, cudaMemcpyDeviceToHost, st));
    }
  }
  CU(cudaGetLastError());
  CU(cudaStreamSynchronize(st));
  s->has_logits = 1;
  if (logits && !all) memcpy(logits, s->logits_host, sizeof(float) * V);
  return KLE_OK;
}

void session_release(CudaSession *s) {
  for (float *p : s->kda_state) cudaFree(p);
  for (float *p : s->conv_tail) cudaFree(p);
  for (float *p : s->mla_cache) cudaFree(p);
  cudaFree(s->arena);
  cudaFree(s->ws);
  free(s->logits_host);
  delete s;
}

size_t kda_state_floats(const int32_t *c) {
  return (size_t)c[KLE_CFG_KDA_HEADS] * c[KLE_CFG_KDA_HEAD_DIM] * c[KLE_CFG_KDA_HEAD_DIM];
}
size_t kda_tail_floats(const int32_t *c) {
  return (size_t)(c[KLE_CFG_CONV] - 1) * c[KLE_CFG_KDA_HEADS] * c[KLE_CFG_KDA_HEAD_DIM];
}

// a host session view of this one's state (arrays the caller frees with free_view), for the blob code
int make_view(CudaSession *s, kle_session *v, bool download) {
  kle_model *hm = s->m->host;
  const int L = s->m->L();
  const int32_t *c = hm->cfg;
  memset(v, 0, sizeof *v);
  v->m = hm;
  v->pos = s->pos;
  v->has_logits = s->has_logits;
  v->logits = s->logits_host;
  v->kda_state = (float **)calloc(L, sizeof(float *));
  v->conv_tail = (float **)calloc((size_t)L * 3, sizeof(float *));
  v->mla_cache = (float **)calloc(L, sizeof(float *));
  if (!v->kda_state || !v->conv_tail || !v->mla_cache) return KLE_ENOMEM;
  for (int l = 0; l < L; l++) {
    if (hm->layer_kind[l] == KLE_LAYER_KDA) {
      const size_t ns = kda_state_floats(c), nt = kda_tail_floats(c);
      if (!(v->kda_state[l] = (float *)malloc(4 * ns))) return KLE_ENOMEM;
      if (download) CU(cudaMemcpy(v->kda_state[l], s->kda_state[l], 4 * ns, cudaMemcpyDeviceToHost));
      for (int i = 0; i < 3; i++) {
        if (!(v->conv_tail[l * 3 + i] = (float *)malloc(4 * nt + 4))) return KLE_ENOMEM;
        if (download && nt) CU(cudaMemcpy(v->conv_tail[l * 3 + i], s->conv_tail[l * 3 + i], 4 * nt, cudaMemcpyDeviceToHost));
      }
    } else {
      const size_t n = mla_row(c) * s->pos;
      if (!(v->mla_cache[l] = (float *)malloc(4 * n + 4))) return KLE_ENOMEM;
      if (download && n) CU(cudaMemcpy(v->mla_cache[l], s->mla_cache[l], 4 * n, cudaMemcpyDeviceToHost));
    }
  }
  return KLE_OK;
}

void free_view(kle_session *v, int L) {
  for (int l = 0; l < L; l++) {
    if (v->kda_state) free(v->kda_state[l]);
    if (v->mla_cache) free(v->mla_cache[l]);
    for (int i = 0; i < 3 && v->conv_tail; i++) free(v->conv_tail[l * 3 + i]);
  }
  free(v->kda_state);
  free(v->conv_tail);
  free(v->mla_cache);
}

}  // namespace

// ------------------------------------------------------------------ kle.h's engine API
extern "C" kle_model *kle_model_create(const int32_t *cfg, int n_cfg, const float *cfgf, int n_cfgf) {
  kle_model *host = kle_host_model_create(cfg, n_cfg, cfgf, n_cfgf);
  if (!host) return nullptr;
  if (!cuda_supported(host->cfg, host->layer_kind)) {
    kle_host_model_free(host);
    return nullptr;
  }
  CudaModel *cm = new (std::nothrow) CudaModel;
  if (!cm) {
    kle_host_model_free(host);
    return nullptr;
  }
  cm->host = host;
  const int L = host->cfg[KLE_CFG_LAYERS], E = host->cfg[KLE_CFG_EXPERTS];
  cm->t.assign((size_t)(L + 1) * KLE_T_COUNT, nullptr);
  cm->experts.assign((size_t)L * (E ? E : 1) * 3, nullptr);
  cm->exp_tab.assign(L, nullptr);
  cm->conv_t.assign((size_t)L * 3, nullptr);
  cm->w_uk.assign(L, nullptr);
  cm->w_uv.assign(L, nullptr);
  if (cudaStreamCreateWithFlags(&cm->st, cudaStreamNonBlocking) != cudaSuccess) {
    kle_host_model_free(host);
    delete cm;
    return nullptr;
  }
  return reinterpret_cast<kle_model *>(cm);
}

extern "C" void kle_model_free(kle_model *m) {
  if (!m) return;
  CudaModel *cm = CM(m);
  for (float *p : cm->t) cudaFree(p);
  for (float *p : cm->experts) cudaFree(p);
  for (float **p : cm->exp_tab) cudaFree(p);
  for (float *p : cm->conv_t) cudaFree(p);
  for (float *p : cm->w_uk) cudaFree(p);
  for (float *p : cm->w_uv) cudaFree(p);
  if (cm->st) cudaStreamDestroy(cm->st);
  kle_host_model_free(cm->host);
  delete cm;
}

extern "C" int kle_model_tensor_expect(kle_model *m, int role, int layer, int expert, int32_t *out) {
  return m ? kle_host_model_tensor_expect(CM(m)->host, role, layer, expert, out) : KLE_EINVAL;
}

extern "C" kle_addr kle_model_tensor(kle_model *m, int role, int layer, int expert, int fmt, int rows, int cols) {
  return m ? kle_host_model_tensor(CM(m)->host, role, layer, expert, fmt, rows, cols) : 0;
}

extern "C" int kle_model_finalize(kle_model *m) {
  if (!m) return KLE_EINVAL;
  CudaModel *cm = CM(m);
  if (cm->ready) return KLE_OK;
  TRY(kle_host_model_finalize(cm->host));
  TRY(upload_all(cm));
  cm->ready = true;
  return KLE_OK;
}

extern "C" long kle_model_bytes(kle_model *m) { return m ? CM(m)->dev_bytes : 0; }

extern "C" kle_session *kle_session_create(kle_model *m) {
  if (!m || !CM(m)->ready) return nullptr;
  CudaModel *cm = CM(m);
  const int32_t *c = cm->c();
  const int L = cm->L(), D = c[KLE_CFG_HIDDEN], V = c[KLE_CFG_VOCAB];
  CudaSession *s = new (std::nothrow) CudaSession;
  if (!s) return nullptr;
  s->m = cm;
  s->kda_state.assign(L, nullptr);
  s->conv_tail.assign((size_t)L * 3, nullptr);
  s->mla_cache.assign(L, nullptr);
  const size_t TB = CUDA_PREFILL_BATCH, W = per_token_width(c);
  const size_t K = c[KLE_CFG_EXPERTS_PER_TOK] > 0 ? c[KLE_CFG_EXPERTS_PER_TOK] : 1;
  const size_t MI = c[KLE_CFG_MOE_INTER] > 0 ? c[KLE_CFG_MOE_INTER] : 1;
  // one arena for the activations: x, h, y [TB, D]; a0..a6 [TB, W]; small; logits; MoE buffers
  const size_t sizes[] = {TB * D, TB * D, TB * D, TB * W, TB * W, TB * W, TB * W, TB * W, TB * W, TB * W,
                          TB * ((size_t)c[KLE_CFG_KDA_HEAD_DIM] + 1), TB * K, TB * K * MI, TB * K * MI, TB * K * D,
                          (size_t)V, TB * (size_t)V, TB, TB * K};
  const size_t n_bufs = sizeof sizes / sizeof sizes[0];
  size_t total = 0;
  for (size_t i = 0; i < n_bufs; i++) total += (sizes[i] + 63) / 64 * 64;
  bool ok = cudaMalloc(&s->arena, sizeof(float) * total) == cudaSuccess &&
            (s->logits_host = (float *)calloc(V, sizeof(float))) != nullptr;
  if (ok) {
    float *p = (float *)s->arena;
    float *bufs[n_bufs];
    for (size_t i = 0; i < n_bufs; i++) {
      bufs[i] = p;
      p += (sizes[i] + 63) / 64 * 64;
    }
    s->x = bufs[0];
    s->h = bufs[1];
    s->y = bufs[2];
    for (int i = 0; i < 7; i++) s->a[i] = bufs[3 + i];
    s->small = bufs[10];
    s->route_w = bufs[11];
    s->moe_g = bufs[12];
    s->moe_u = bufs[13];
    s->moe_y = bufs[14];
    s->logits_dev = bufs[15];
    s->logits_all = bufs[16];
    s->tok = (int32_t *)bufs[17];
    s->route_idx = (int32_t *)bufs[18];
  }
  for (int l = 0; ok && l < L; l++) {
    if (cm->host->layer_kind[l] != KLE_LAYER_KDA) continue;
    ok = cudaMalloc(&s->kda_state[l], 4 * kda_state_floats(c)) == cudaSuccess &&
         cudaMemset(s->kda_state[l], 0, 4 * kda_state_floats(c)) == cudaSuccess;
    for (int i = 0; ok && i < 3; i++)
      ok = cudaMalloc(&s->conv_tail[l * 3 + i], 4 * kda_tail_floats(c) + 4) == cudaSuccess &&
           cudaMemset(s->conv_tail[l * 3 + i], 0, 4 * kda_tail_floats(c) + 4) == cudaSuccess;
  }
  if (!ok) {
    session_release(s);
    return nullptr;
  }
  return reinterpret_cast<kle_session *>(s);
}

extern "C" void kle_session_free(kle_session *s) {
  if (s) session_release(CS(s));
}

extern "C" int kle_session_forward(kle_session *s, const int32_t *tokens, int n, float *logits, int all) {
  return s ? forward(CS(s), tokens, n, logits, all) : KLE_EINVAL;
}

extern "C" kle_addr kle_session_logits(kle_session *s) {
  return s && CS(s)->has_logits ? (kle_addr)CS(s)->logits_host : 0;
}

extern "C" int kle_session_pos(kle_session *s) { return s ? CS(s)->pos : 0; }

extern "C" long kle_session_state_size(kle_session *s) {
  if (!s) return 0;
  kle_session v;
  memset(&v, 0, sizeof v);
  v.m = CS(s)->m->host;
  v.pos = CS(s)->pos;
  v.has_logits = CS(s)->has_logits;
  return kle_host_session_state_size(&v);
}

extern "C" int kle_session_state_save(kle_session *s, uint8_t *dst, long n) {
  if (!s || !dst) return KLE_EINVAL;
  CudaSession *cs = CS(s);
  kle_session v;
  int rc = make_view(cs, &v, true);
  if (rc == KLE_OK) rc = kle_host_session_state_save(&v, dst, n);
  free_view(&v, cs->m->L());
  return rc;
}

extern "C" int kle_session_state_load(kle_session *s, const uint8_t *src, long n) {
  if (!s) return KLE_EINVAL;
  CudaSession *cs = CS(s);
  // the host engine checks the whole blob first; the device state changes only after that
  kle_session *hv = kle_host_session_create(cs->m->host);
  if (!hv) return KLE_ENOMEM;
  int rc = kle_host_session_state_load(hv, src, n);
  if (rc == KLE_OK) rc = reserve(cs, hv->pos);
  if (rc == KLE_OK) {
    const int32_t *c = cs->m->c();
    bool ok = true;
    for (int l = 0; ok && l < cs->m->L(); l++) {
      if (cs->m->host->layer_kind[l] == KLE_LAYER_KDA) {
        ok = cudaMemcpy(cs->kda_state[l], hv->kda_state[l], 4 * kda_state_floats(c), cudaMemcpyHostToDevice) == cudaSuccess;
        for (int i = 0; ok && i < 3; i++)
          ok = cudaMemcpy(cs->conv_tail[l * 3 + i], hv->conv_tail[l * 3 + i], 4 * kda_tail_floats(c), cudaMemcpyHostToDevice) ==
               cudaSuccess;
      } else if (hv->pos) {
        ok = cudaMemcpy(cs->mla_cache[l], hv->mla_cache[l], 4 * mla_row(c) * hv->pos, cudaMemcpyHostToDevice) == cudaSuccess;
      }
    }
    if (ok) {
      memcpy(cs->logits_host, hv->logits, sizeof(float) * c[KLE_CFG_VOCAB]);
      cs->pos = hv->pos;
      cs->has_logits = hv->has_logits;
    } else {
      rc = KLE_EDEVICE;
    }
  }
  kle_host_session_free(hv);
  return rc;
}

extern "C" int kle_session_state_save_at(kle_session *s, kle_addr dst, long n) {
  return kle_session_state_save(s, (uint8_t *)dst, n);
}

extern "C" int kle_session_state_load_at(kle_session *s, kle_addr src, long n) {
  return kle_session_state_load(s, (const uint8_t *)src, n);
}

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
