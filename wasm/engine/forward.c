/*
 * forward.c: the Kimi Linear forward pass over a batch of tokens, written once against the
 * kernel API. One token takes the decode kernels (KDA step, MLA decode over the latent cache);
 * a batch takes the prefill kernels (chunked KDA, causal MLA prefill), which give the same
 * result to float32 rounding.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

#define TRY(x)                                                                                     \
  do {                                                                                             \
    int rc_ = (x);                                                                                 \
    if (rc_ != KLE_OK) return rc_;                                                                 \
  } while (0)

static const kle_tensor *T_(const kle_model *m, int role, int layer) { return kle_tensor_at(m, role, layer); }

/* Y[T, rows] = X[T, cols] W^T for a placed tensor */
static int mm(const kle_tensor *w, const float *X, float *Y, int T) {
  return kle_matmul(w->fmt, w->data, X, Y, T, w->rows, w->cols);
}

static const float *f32(const kle_tensor *t) { return (const float *)t->data; }

static void add_rows(float *x, const float *y, size_t n) {
  for (size_t i = 0; i < n; i++) x[i] += y[i];
}

static int kda_layer(kle_session *s, int l, const float *h, float *y, int T) {
  const kle_model *m = s->m;
  const int32_t *c = m->cfg;
  const int D = c[KLE_CFG_HIDDEN], H = c[KLE_CFG_KDA_HEADS], dk = c[KLE_CFG_KDA_HEAD_DIM];
  const int HK = H * dk, W = c[KLE_CFG_CONV], full = c[KLE_CFG_FULL_RANK_GATE];
  const float eps = m->cfgf[KLE_CFGF_RMS_EPS];
  float *q = s->a3, *k = s->a4, *v = s->a5, *o = s->a6, *g = s->a1, *beta = s->a2;
  (void)D;
  /* projections, each through its causal conv + SiLU with the session's tail */
  for (int i = 0; i < 3; i++) {
    TRY(mm(T_(m, KLE_T_KDA_Q + i, l), h, s->a0, T));
    TRY(kle_conv_short(s->a0, m->conv_t[l * 3 + i], s->conv_tail[l * 3 + i], i == 0 ? q : i == 1 ? k : v, T, HK, W, 1));
  }
  /* forget gate through the low-rank (or full-rank) f projection */
  if (full) {
    TRY(mm(T_(m, KLE_T_KDA_F_B, l), h, s->a0, T));
  } else {
    TRY(mm(T_(m, KLE_T_KDA_F_A, l), h, s->small, T));
    TRY(mm(T_(m, KLE_T_KDA_F_B, l), s->small, s->a0, T));
  }
  TRY(kle_kda_gate(s->a0, f32(T_(m, KLE_T_KDA_A_LOG, l)), f32(T_(m, KLE_T_KDA_DT_BIAS, l)), g, T, H, dk,
                   m->cfgf[KLE_CFGF_GATE_LOWER_BOUND]));
  TRY(mm(T_(m, KLE_T_KDA_BETA, l), h, beta, T));
  TRY(kle_sigmoid(beta, beta, T * H));
  const float scale = 1.0f / sqrtf((float)dk);
  if (T == 1)
    TRY(kle_kda_step(s->kda_state[l], q, k, v, g, beta, o, H, dk, dk, scale, KLE_KDA_L2NORM_QK));
  else
    TRY(kle_kda_chunk(s->kda_state[l], q, k, v, g, beta, o, T, H, dk, dk, scale, KLE_KDA_L2NORM_QK, 0));
  /* output gate: RMSNorm per head times sigmoid of the g projection */
  if (full) {
    TRY(mm(T_(m, KLE_T_KDA_G_B, l), h, s->a0, T));
  } else {
    TRY(mm(T_(m, KLE_T_KDA_G_A, l), h, s->small, T));
    TRY(mm(T_(m, KLE_T_KDA_G_B, l), s->small, s->a0, T));
  }
  TRY(kle_rmsnorm_gated(o, s->a0, f32(T_(m, KLE_T_KDA_O_NORM, l)), o, T * H, dk, eps));
  return mm(T_(m, KLE_T_KDA_O, l), o, y, T);
}

static int mla_layer(kle_session *s, int l, const float *h, float *y, int T) {
  const kle_model *m = s->m;
  const int32_t *c = m->cfg;
  const int Hm = c[KLE_CFG_MLA_HEADS], nope = c[KLE_CFG_QK_NOPE], rope = c[KLE_CFG_QK_ROPE];
  const int vh = c[KLE_CFG_V_HEAD], R = c[KLE_CFG_KV_RANK], Dc = R + rope, Dq = nope + rope;
  const float eps = m->cfgf[KLE_CFGF_RMS_EPS];
  float *qf = s->a0, *kv = s->a1, *qn = s->a2, *qlat = s->a3, *olat = s->a4, *ov = s->a5;
  TRY(mm(T_(m, KLE_T_MLA_Q, l), h, qf, T));
  TRY(mm(T_(m, KLE_T_MLA_KV_A, l), h, kv, T));
  /* cache rows: normalized latent, then the rope part as projected (Kimi uses no rotary) */
  float *cache = s->mla_cache[l];
  for (int t = 0; t < T; t++) {
    float *row = cache + (size_t)(s->pos + t) * Dc;
    TRY(kle_rmsnorm(kv + (size_t)t * Dc, f32(T_(m, KLE_T_MLA_KV_NORM, l)), row, 1, R, eps));
    memcpy(row + R, kv + (size_t)t * Dc + R, sizeof(float) * rope);
  }
  /* absorbed queries over the latent: W_uk^T q_nope per head, then q's rope part */
  for (int t = 0; t < T; t++) {
    const float *qt = qf + (size_t)t * Hm * Dq;
    for (int hh = 0; hh < Hm; hh++) memcpy(qn + (size_t)hh * nope, qt + (size_t)hh * Dq, sizeof(float) * nope);
    float *ql = qlat + (size_t)t * Hm * Dc;
    TRY(kle_mla_absorb_q(m->w_uk[l], qn, ql, Hm, nope, R, Dc));
    for (int hh = 0; hh < Hm; hh++) memcpy(ql + (size_t)hh * Dc + R, qt + (size_t)hh * Dq + nope, sizeof(float) * rope);
  }
  const float scale = 1.0f / sqrtf((float)Dq);
  if (T == 1)
    TRY(kle_mla_decode(qlat, cache, s->pos + 1, Hm, Dc, R, scale, olat, NULL));
  else
    TRY(kle_mla_prefill(qlat, cache, s->pos, T, Hm, Dc, R, scale, olat));
  for (int t = 0; t < T; t++)
    TRY(kle_mla_up_v(m->w_uv[l], olat + (size_t)t * Hm * R, ov + (size_t)t * Hm * vh, Hm, vh, R));
  return mm(T_(m, KLE_T_MLA_O, l), ov, y, T);
}

/* y = down(silu(gate h) * up h) */
static int swiglu_mlp(kle_session *s, const kle_tensor *wg, const kle_tensor *wu, const kle_tensor *wd,
                      const float *h, float *y, int T) {
  TRY(mm(wg, h, s->a0, T));
  TRY(mm(wu, h, s->a1, T));
  TRY(kle_swiglu(s->a0, s->a1, s->a2, T * wg->rows));
  return mm(wd, s->a2, y, T);
}

static int moe_layer(kle_session *s, int l, const float *h, float *y, int T) {
  const kle_model *m = s->m;
  const int32_t *c = m->cfg;
  const int D = c[KLE_CFG_HIDDEN], E = c[KLE_CFG_EXPERTS], K = c[KLE_CFG_EXPERTS_PER_TOK];
  const kle_tensor *router = T_(m, KLE_T_MOE_ROUTER, l), *bias = T_(m, KLE_T_MOE_BIAS, l);
  TRY(mm(router, h, s->a0, T));
  /* renormalizing a single choice would turn its weight into 1; the reference leaves it */
  const int renorm = c[KLE_CFG_RENORM] && K > 1;
  for (int t = 0; t < T; t++)
    TRY(kle_moe_route(s->a0 + (size_t)t * E, bias->data ? f32(bias) : NULL, E, K, c[KLE_CFG_N_GROUP],
                      c[KLE_CFG_TOPK_GROUP], c[KLE_CFG_ROUTER_ACT], renorm,
                      m->cfgf[KLE_CFGF_ROUTED_SCALE], s->route_idx + (size_t)t * K, s->route_w + (size_t)t * K));
  memset(y, 0, sizeof(float) * (size_t)T * D);
  /* one matmul per expert over the tokens routed to it */
  for (int e = 0; e < E; e++) {
    int cnt = 0;
    for (int i = 0; i < T * K; i++)
      if (s->route_idx[i] == e) {
        s->tok_list[cnt] = i;
        memcpy(s->a3 + (size_t)cnt * D, h + (size_t)(i / K) * D, sizeof(float) * D);
        cnt++;
      }
    if (!cnt) continue;
    const kle_tensor *ex = &m->experts[((size_t)l * E + e) * 3];
    TRY(swiglu_mlp(s, &ex[0], &ex[1], &ex[2], s->a3, s->a4, cnt));
    for (int r = 0; r < cnt; r++) {
      int i = s->tok_list[r];
      float w = s->route_w[i], *yt = y + (size_t)(i / K) * D;
      const float *er = s->a4 + (size_t)r * D;
      for (int d = 0; d < D; d++) yt[d] += w * er[d];
    }
  }
  if (c[KLE_CFG_SHARED_EXPERTS] > 0) {
    TRY(swiglu_mlp(s, T_(m, KLE_T_SHEXP_GATE, l), T_(m, KLE_T_SHEXP_UP, l), T_(m, KLE_T_SHEXP_DOWN, l), h, s->a4, T));
    add_rows(y, s->a4, (size_t)T * D);
  }
  return KLE_OK;
}

static int embed(const kle_model *m, int token, float *x) {
  const kle_tensor *e = T_(m, KLE_T_TOK_EMBD, -1);
  long rb = kle_row_bytes(e->fmt, e->cols);
  return kle_dequantize(e->fmt, e->data + (size_t)rb * token, x, e->cols);
}

static int lm_head(kle_session *s, const float *x, float *logits, int T) {
  const kle_model *m = s->m;
  const int D = m->cfg[KLE_CFG_HIDDEN];
  const kle_tensor *head = T_(m, KLE_T_LM_HEAD, -1);
  if (!head->data) head = T_(m, KLE_T_TOK_EMBD, -1);
  TRY(kle_rmsnorm(x, f32(T_(m, KLE_T_OUT_NORM, -1)), s->h, T, D, m->cfgf[KLE_CFGF_RMS_EPS]));
  return mm(head, s->h, logits, T);
}

/* grows every MLA cache to hold at least `need` rows */
static int reserve(kle_session *s, int need) {
  const kle_model *m = s->m;
  if (need <= s->mla_cap) return KLE_OK;
  int cap = s->mla_cap ? s->mla_cap : 64;
  while (cap < need) cap = cap > (1 << 29) ? need : cap * 2;
  const size_t Dc = (size_t)m->cfg[KLE_CFG_KV_RANK] + m->cfg[KLE_CFG_QK_ROPE];
  for (int l = 0; l < m->cfg[KLE_CFG_LAYERS]; l++) {
    if (m->layer_kind[l] != KLE_LAYER_MLA) continue;
    float *p = realloc(s->mla_cache[l], sizeof(float) * Dc * (size_t)cap);
    if (!p) return KLE_ENOMEM;
    s->mla_cache[l] = p;
  }
  s->mla_cap = cap;
  return KLE_OK;
}

int kle_forward(kle_session *s, const int32_t *tokens, int n, float *logits, int all) {
  const kle_model *m = s->m;
  const int D = m->cfg[KLE_CFG_HIDDEN], V = m->cfg[KLE_CFG_VOCAB], L = m->cfg[KLE_CFG_LAYERS];
  if (n <= 0 || !tokens || n > (1 << 30) - s->pos) return KLE_EINVAL;
  for (int i = 0; i < n; i++)
    if (tokens[i] < 0 || tokens[i] >= V) return KLE_EINVAL;
  TRY(reserve(s, s->pos + n));
  for (int off = 0; off < n; off += KLE_PREFILL_BATCH) {
    const int T = n - off < KLE_PREFILL_BATCH ? n - off : KLE_PREFILL_BATCH;
    for (int t = 0; t < T; t++) TRY(embed(m, tokens[off + t], s->x + (size_t)t * D));
    for (int l = 0; l < L; l++) {
      const float eps = m->cfgf[KLE_CFGF_RMS_EPS];
      TRY(kle_rmsnorm(s->x, f32(T_(m, KLE_T_ATTN_NORM, l)), s->h, T, D, eps));
      TRY(m->layer_kind[l] == KLE_LAYER_KDA ? kda_layer(s, l, s->h, s->y, T) : mla_layer(s, l, s->h, s->y, T));
      add_rows(s->x, s->y, (size_t)T * D);
      TRY(kle_rmsnorm(s->x, f32(T_(m, KLE_T_FFN_NORM, l)), s->h, T, D, eps));
      if (kle_layer_is_moe(m, l))
        TRY(moe_layer(s, l, s->h, s->y, T));
      else
        TRY(swiglu_mlp(s, T_(m, KLE_T_FFN_GATE, l), T_(m, KLE_T_FFN_UP, l), T_(m, KLE_T_FFN_DOWN, l), s->h, s->y, T));
      add_rows(s->x, s->y, (size_t)T * D);
    }
    s->pos += T;
    if (logits && all) TRY(lm_head(s, s->x, logits + (size_t)off * V, T));
    if (off + T == n) {
      TRY(lm_head(s, s->x + (size_t)(T - 1) * D, s->logits, 1));
      s->has_logits = 1;
    }
  }
  if (logits && !all) memcpy(logits, s->logits, sizeof(float) * V);
  return KLE_OK;
}
