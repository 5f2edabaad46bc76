/*
 * layers.c: the layer kinds of the Kimi Linear family, each a row of data (its tensors, its
 * per-session state, its derived weights) and one forward function written against the
 * backend's operations. docs/model.md has the math with shapes.
 *
 * Token mixers: the linear-attention layer (KDA; with one decay per head instead of one per
 * channel it is Gated DeltaNet's gate, chosen by KLE_CFG_KDA_GATE_PER_HEAD) and MLA over a
 * compressed latent cache. Feed-forward blocks: dense SwiGLU and the routed MoE.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

#define SHAPE(r, cc) (*rows = (r), *cols = (cc), KLE_TENSOR_REQUIRED)
#define VEC(n) (*anyfmt = 0, *rows = 1, *cols = (n), KLE_TENSOR_REQUIRED)

static const kle_tensor *W_(const kle_model *m, int role, int layer) { return kle_tensor_at(m, role, layer); }
static const float *F_(const kle_model *m, int role, int layer) { return (const float *)W_(m, role, layer)->data; }

/* Y[i] = X[i] W_i^T for the n <= 8 roles' weights of layer l: in one operation where the backend
 * runs it (one launch on a GPU), else one by one */
static int matmuls(const kle_model *m, int n, const int *roles, int l, const float *const *X, float *const *Y, int T) {
  const kle_tensor *w[8];
  for (int i = 0; i < n; i++) w[i] = W_(m, roles[i], l);
  const int rc = m->b->matmul_n ? m->b->matmul_n(m->ctx, n, w, X, Y, T) : KLE_ENOSYS;
  if (rc != KLE_ENOSYS) return rc;
  for (int i = 0; i < n; i++) KLE_TRY(m->b->matmul(m->ctx, w[i], X[i], Y[i], T));
  return KLE_OK;
}

/* ---------------------------------------------------------------- linear attention (KDA / GDN gate) */
/* gate values per head: one per channel (KDA) or one per head (Gated DeltaNet) */
static int kda_gate_width(const kle_model *m) {
  return m->cfg[KLE_CFG_KDA_GATE_PER_HEAD] ? 1 : m->cfg[KLE_CFG_KDA_HEAD_DIM];
}

static int kda_expect(const kle_model *m, int role, int *rows, int *cols, int *anyfmt) {
  const int32_t *c = m->cfg;
  const int D = c[KLE_CFG_HIDDEN], H = c[KLE_CFG_KDA_HEADS], dk = c[KLE_CFG_KDA_HEAD_DIM], HK = H * dk;
  const int HG = H * kda_gate_width(m);
  switch (role) {
  case KLE_T_KDA_Q: case KLE_T_KDA_K: case KLE_T_KDA_V: return SHAPE(HK, D);
  case KLE_T_KDA_CONV_Q: case KLE_T_KDA_CONV_K: case KLE_T_KDA_CONV_V:
    *anyfmt = 0;
    return SHAPE(HK, c[KLE_CFG_CONV]);
  case KLE_T_KDA_F_A: case KLE_T_KDA_G_A: return SHAPE(dk, D);
  case KLE_T_KDA_F_B: return SHAPE(HG, dk);
  case KLE_T_KDA_G_B: return SHAPE(HK, dk);
  case KLE_T_KDA_A_LOG: return VEC(H);
  case KLE_T_KDA_DT_BIAS: return VEC(HG);
  case KLE_T_KDA_BETA: return SHAPE(H, D);
  case KLE_T_KDA_O_NORM: return VEC(dk);
  case KLE_T_KDA_O: return SHAPE(D, HK);
  default: return KLE_TENSOR_UNUSED;
  }
}

/* sections: the conv tails of q, k, v [W-1, H*K], then S [H, K, K] */
static uint64_t kda_state_floats(const kle_model *m, int section) {
  const uint64_t H = (uint64_t)m->cfg[KLE_CFG_KDA_HEADS], dk = (uint64_t)m->cfg[KLE_CFG_KDA_HEAD_DIM];
  return section < 3 ? (uint64_t)(m->cfg[KLE_CFG_CONV] - 1) * H * dk : H * dk * dk;
}

static uint64_t no_cache(const kle_model *m) {
  (void)m;
  return 0;
}

/* conv taps [C, W] -> [W, C]: the conv reads one tap across all channels at a time */
static int kda_derive(kle_model *m, int l) {
  for (int i = 0; i < 3; i++) {
    const kle_tensor *t = kle_tensor_at(m, KLE_T_KDA_CONV_Q + i, l);
    kle_tensor *d = kle_derived_slot(m, l, i);
    float *wt = kle_host_alloc_n(kle_mul64((uint64_t)t->rows, (uint64_t)t->cols), sizeof(float));
    if (!wt) return KLE_ENOMEM;
    const float *w = (const float *)t->data;
    for (int ch = 0; ch < t->rows; ch++)
      for (int tap = 0; tap < t->cols; tap++) wt[(size_t)tap * t->rows + ch] = w[(size_t)ch * t->cols + tap];
    free(d->data);
    *d = (kle_tensor){.fmt = KLE_W_F32, .rows = t->cols, .cols = t->rows, .bytes = (long)(sizeof(float) * (size_t)t->rows * t->cols), .data = (uint8_t *)wt};
  }
  return KLE_OK;
}

/* a low-rank pair: out = B (A h), through s->small */
static int low_rank(kle_session *s, int role_a, int role_b, int l, const float *h, float *out, int T) {
  const kle_model *m = s->m;
  KLE_TRY(m->b->matmul(m->ctx, W_(m, role_a, l), h, s->small, T));
  return m->b->matmul(m->ctx, W_(m, role_b, l), s->small, out, T);
}

/* the fused step's arguments for row r of lead's buffers, through the state sections st (NULL:
 * none, for kda_fused_rows, whose rows each bring their own) */
static kle_kda_fused_args fused_args(const kle_session *lead, int l, int r, float *const *st) {
  const kle_model *m = lead->m;
  const int32_t *c = m->cfg;
  const int H = c[KLE_CFG_KDA_HEADS], dk = c[KLE_CFG_KDA_HEAD_DIM];
  const size_t rk = (size_t)r * H * dk;
  const int Kg = kda_gate_width(m);
  return (kle_kda_fused_args){lead->a[0] + rk, lead->a[1] + rk, lead->a[2] + rk,
                              (const float *)kle_derived_at(m, l, 0)->data, (const float *)kle_derived_at(m, l, 1)->data,
                              (const float *)kle_derived_at(m, l, 2)->data, st ? st[0] : NULL, st ? st[1] : NULL,
                              st ? st[2] : NULL, lead->a[3] + (size_t)r * H * Kg, F_(m, KLE_T_KDA_A_LOG, l),
                              F_(m, KLE_T_KDA_DT_BIAS, l), m->cfgf[KLE_CFGF_GATE_LOWER_BOUND], Kg, lead->a[4] + (size_t)r * H,
                              lead->a[5] + rk, F_(m, KLE_T_KDA_O_NORM, l), m->cfgf[KLE_CFGF_RMS_EPS], 1.0f / sqrtf((float)dk),
                              st ? st[3] : NULL, lead->a[10] + rk, H, dk, dk, c[KLE_CFG_CONV]};
}

/*
 * Row r of a batched step (its projections made in lead's buffers, one row each) through
 * session rs's conv tails and state: the fused step where the backend has one, else the
 * kernels one by one; the output goes to row r of lead's o.
 */
static int kda_row(kle_session *rs, int l, kle_session *lead, int r) {
  const kle_model *m = rs->m;
  const kle_backend *b = m->b;
  kle_backend_ctx *cx = m->ctx;
  float **st = rs->state + (size_t)l * KLE_MAX_STATE;
  const kle_kda_fused_args a = fused_args(lead, l, r, st);
  if (b->kda_fused_step) {
    const int rc = b->kda_fused_step(cx, &a);
    if (rc != KLE_ENOSYS) return rc;
  }
  /* the per-row temporaries: row r of the buffers the single-session path uses */
  const size_t rk = (size_t)r * a.H * a.K;
  float *q = lead->a[6] + rk, *k = lead->a[7] + rk, *v = lead->a[8] + rk, *g = lead->a[9] + rk, *braw = lead->a[4] + (size_t)r * a.H;
  const float *xs[3] = {a.xq, a.xk, a.xv};
  float *outs[3] = {q, k, v};
  for (int i = 0; i < 3; i++) KLE_TRY(b->conv_short(cx, xs[i], (const float *)kle_derived_at(m, l, i)->data, st[i], outs[i], 1, a.H * a.K, a.W));
  KLE_TRY(b->kda_gate(cx, a.graw, a.A_log, a.dt_bias, g, 1, a.H, a.K, a.Kg, a.lower_bound));
  KLE_TRY(b->sigmoid(cx, braw, braw, (size_t)a.H));
  KLE_TRY(b->kda_recur(cx, st[3], q, k, v, g, braw, a.o, 1, a.H, a.K, a.V, a.scale));
  return b->rmsnorm(cx, a.o, a.oraw, a.onorm, a.o, a.H, a.K, a.eps);
}

/* a batched step's rows in one operation where the backend has one; KLE_ENOSYS if not */
static int kda_rows(kle_session *s, int l, int T) {
  if (!s->rowtab || !s->m->b->kda_fused_rows) return KLE_ENOSYS;
  const kle_kda_fused_args a = fused_args(s, l, 0, NULL);
  return s->m->b->kda_fused_rows(s->m->ctx, &a, s->rowtab + (size_t)l * T * KLE_ROW_SLOTS, T);
}

static int kda_forward(kle_session *s, int l, const float *h, float *y, int T) {
  const kle_model *m = s->m;
  const kle_backend *b = m->b;
  kle_backend_ctx *cx = m->ctx;
  const int32_t *c = m->cfg;
  const int H = c[KLE_CFG_KDA_HEADS], dk = c[KLE_CFG_KDA_HEAD_DIM], HK = H * dk, W = c[KLE_CFG_CONV];
  const int Kg = kda_gate_width(m);
  const float eps = m->cfgf[KLE_CFGF_RMS_EPS], lb = m->cfgf[KLE_CFGF_GATE_LOWER_BOUND];
  const float scale = 1.0f / sqrtf((float)dk);
  float *xq = s->a[0], *graw = s->a[3], *braw = s->a[4], *oraw = s->a[5];
  float *q = s->a[6], *k = s->a[7], *v = s->a[8], *g = s->a[9], *o = s->a[10];
  float **st = s->state + (size_t)l * KLE_MAX_STATE;
  const float *A_log = F_(m, KLE_T_KDA_A_LOG, l), *dt_bias = F_(m, KLE_T_KDA_DT_BIAS, l);
  /* A fused step takes every projection at once, the output gate's last: it may start
   * streaming the state while that one finishes, since it reads oraw only after waiting for
   * it. So does a batched step (s->rows: each row another session's one token), whose rows
   * then each take their own session's state: in one operation where the backend has one, else
   * row by row (a single token is row 0 of itself). Otherwise each projection is used as soon as
   * it is made (by then a batch's projections would have pushed the first ones out of cache),
   * all through one buffer. */
  if ((T == 1 && b->kda_fused_step != NULL) || s->rows) {
    /* every product of h at once, then both low-rank second halves (their first halves in q's and
     * k's temporaries, which only the row-by-row fallback below uses, after them) */
    const int first[6] = {KLE_T_KDA_Q, KLE_T_KDA_K, KLE_T_KDA_V, KLE_T_KDA_F_A, KLE_T_KDA_BETA, KLE_T_KDA_G_A};
    const float *hx[6] = {h, h, h, h, h, h};
    float *out1[6] = {s->a[0], s->a[1], s->a[2], q, braw, k};
    KLE_TRY(matmuls(m, 6, first, l, hx, out1, T));
    const int second[2] = {KLE_T_KDA_F_B, KLE_T_KDA_G_B};
    const float *lx[2] = {q, k};
    float *out2[2] = {graw, oraw};
    KLE_TRY(matmuls(m, 2, second, l, lx, out2, T));
    const int rc = kda_rows(s, l, T);
    if (rc != KLE_OK && rc != KLE_ENOSYS) return rc;
    for (int r = 0; r < T && rc == KLE_ENOSYS; r++) KLE_TRY(kda_row(s->rows ? s->rows[r] : s, l, s, r));
    return b->matmul(cx, W_(m, KLE_T_KDA_O, l), o, y, T);
  }
  float *outs[3] = {q, k, v};
  for (int i = 0; i < 3; i++) {
    KLE_TRY(b->matmul(cx, W_(m, KLE_T_KDA_Q + i, l), h, xq, T));
    KLE_TRY(b->conv_short(cx, xq, (const float *)kle_derived_at(m, l, i)->data, st[i], outs[i], T, HK, W));
  }
  KLE_TRY(low_rank(s, KLE_T_KDA_F_A, KLE_T_KDA_F_B, l, h, graw, T));
  KLE_TRY(b->kda_gate(cx, graw, A_log, dt_bias, g, T, H, dk, Kg, lb));
  KLE_TRY(b->matmul(cx, W_(m, KLE_T_KDA_BETA, l), h, braw, T));
  KLE_TRY(b->sigmoid(cx, braw, braw, (size_t)T * H));
  KLE_TRY(b->kda_recur(cx, st[3], q, k, v, g, braw, o, T, H, dk, dk, scale));
  KLE_TRY(low_rank(s, KLE_T_KDA_G_A, KLE_T_KDA_G_B, l, h, oraw, T));
  KLE_TRY(b->rmsnorm(cx, o, oraw, F_(m, KLE_T_KDA_O_NORM, l), o, T * H, dk, eps));
  return b->matmul(cx, W_(m, KLE_T_KDA_O, l), o, y, T);
}

/* ---------------------------------------------------------------- MLA */
static int mla_expect(const kle_model *m, int role, int *rows, int *cols, int *anyfmt) {
  const int32_t *c = m->cfg;
  const int D = c[KLE_CFG_HIDDEN], Hm = c[KLE_CFG_MLA_HEADS], nope = c[KLE_CFG_QK_NOPE];
  const int rope = c[KLE_CFG_QK_ROPE], vh = c[KLE_CFG_V_HEAD], R = c[KLE_CFG_KV_RANK];
  switch (role) {
  case KLE_T_MLA_Q: return SHAPE(Hm * (nope + rope), D);
  case KLE_T_MLA_KV_A: return SHAPE(R + rope, D);
  case KLE_T_MLA_KV_NORM: return VEC(R);
  case KLE_T_MLA_KV_B: return SHAPE(Hm * (nope + vh), R);
  case KLE_T_MLA_O: return SHAPE(D, Hm * vh);
  case KLE_T_MLA_KV_IMPORTANCE: return c[KLE_CFG_KV_IMPORTANCE] ? VEC(D) : KLE_TENSOR_UNUSED;
  default: return KLE_TENSOR_UNUSED;
  }
}

static uint64_t no_state(const kle_model *m, int section) {
  (void)m;
  (void)section;
  return 0;
}

/* one latent row per token: the normalized compressed kv, then the rope key part */
static uint64_t mla_cache_row(const kle_model *m) {
  return (uint64_t)m->cfg[KLE_CFG_KV_RANK] + m->cfg[KLE_CFG_QK_ROPE];
}

/* kv_b rows per head are nope rows of W_uk then v rows of W_uv, each over the latent: split them */
static int mla_derive(kle_model *m, int l) {
  const int Hm = m->cfg[KLE_CFG_MLA_HEADS], nope = m->cfg[KLE_CFG_QK_NOPE];
  const int vh = m->cfg[KLE_CFG_V_HEAD], R = m->cfg[KLE_CFG_KV_RANK];
  float *kvb = kle_tensor_to_f32(kle_tensor_at(m, KLE_T_MLA_KV_B, l));
  float *uk = kle_host_alloc_n(kle_mul64((uint64_t)Hm * nope, (uint64_t)R), sizeof(float));
  float *uv = kle_host_alloc_n(kle_mul64((uint64_t)Hm * vh, (uint64_t)R), sizeof(float));
  if (!kvb || !uk || !uv) {
    free(kvb);
    free(uk);
    free(uv);
    return KLE_ENOMEM;
  }
  for (int hh = 0; hh < Hm; hh++) {
    const float *src = kvb + (size_t)hh * (nope + vh) * R;
    memcpy(uk + (size_t)hh * nope * R, src, sizeof(float) * (size_t)nope * R);
    memcpy(uv + (size_t)hh * vh * R, src + (size_t)nope * R, sizeof(float) * (size_t)vh * R);
  }
  free(kvb);
  kle_tensor *duk = kle_derived_slot(m, l, 0), *duv = kle_derived_slot(m, l, 1);
  free(duk->data);
  free(duv->data);
  *duk = (kle_tensor){.fmt = KLE_W_F32, .rows = Hm * nope, .cols = R, .bytes = (long)(sizeof(float) * (size_t)Hm * nope * R), .data = (uint8_t *)uk};
  *duv = (kle_tensor){.fmt = KLE_W_F32, .rows = Hm * vh, .cols = R, .bytes = (long)(sizeof(float) * (size_t)Hm * vh * R), .data = (uint8_t *)uv};
  return KLE_OK;
}

static int mla_forward(kle_session *s, int l, const float *h, float *y, int T) {
  const kle_model *m = s->m;
  const kle_backend *b = m->b;
  kle_backend_ctx *cx = m->ctx;
  const int32_t *c = m->cfg;
  const int Hm = c[KLE_CFG_MLA_HEADS], nope = c[KLE_CFG_QK_NOPE], rope = c[KLE_CFG_QK_ROPE];
  const int vh = c[KLE_CFG_V_HEAD], R = c[KLE_CFG_KV_RANK], Dc = R + rope;
  float *qf = s->a[0], *kv = s->a[1], *qlat = s->a[3], *olat = s->a[4], *ov = s->a[5];
  /* new rows go after the cached ones: with a budget, rows are not positions (no rotary here,
   * so attention does not care which slot a token's row sits in; rowinfo says) */
  const int L0 = s->len;
  /* a step captured as a graph reads the length where graph_step wrote it; -cap tells the
   * operations how long the cache can be (the graph is captured again when it grows) */
  const int L0op = s->dyn ? -s->cap : L0;
  const float scale = 1.0f / sqrtf((float)(nope + rope));
  const int proj[2] = {KLE_T_MLA_Q, KLE_T_MLA_KV_A};
  const float *hx[2] = {h, h};
  float *pout[2] = {qf, kv};
  KLE_TRY(matmuls(m, 2, proj, l, hx, pout, T));
  if (s->rows) { /* a batched step: row r joins session rows[r]'s cache, and attends over it */
    KLE_TRY(b->mla_absorb(cx, (const float *)kle_derived_at(m, l, 0)->data, qf, qlat, T, Hm, nope, rope, R));
    int rc = KLE_ENOSYS;
    if (s->rowtab && b->mla_decode_rows)
      rc = b->mla_decode_rows(cx, kv, F_(m, KLE_T_MLA_KV_NORM, l), qlat, s->rowtab + (size_t)l * T * KLE_ROW_SLOTS, s->rowlens,
                              s->rowmax, s->rows[0]->kv_fmt, T, Hm, R, rope, m->cfgf[KLE_CFGF_RMS_EPS], scale, olat);
    if (rc != KLE_OK && rc != KLE_ENOSYS) return rc;
    for (int r = 0; r < T && rc == KLE_ENOSYS; r++) {
      kle_session *rs = s->rows[r];
      KLE_TRY(b->mla_cache_write(cx, kv + (size_t)r * Dc, F_(m, KLE_T_MLA_KV_NORM, l), rs->cache[l], rs->kv_fmt, rs->len, 1, R,
                                 rope, m->cfgf[KLE_CFGF_RMS_EPS]));
      KLE_TRY(b->mla_attend(cx, qlat + (size_t)r * Hm * Dc, rs->cache[l], rs->kv_fmt, rs->len, 1, Hm, Dc, R, scale,
                            olat + (size_t)r * Hm * R, NULL, 0.0f));
    }
    KLE_TRY(b->mla_up_v(cx, (const float *)kle_derived_at(m, l, 1)->data, olat, ov, T, Hm, vh, R));
    return b->matmul(cx, W_(m, KLE_T_MLA_O, l), ov, y, T);
  }
  /* Kimi's MLA uses no rotary: the rope part goes into the cache as projected */
  KLE_TRY(b->mla_cache_write(cx, kv, F_(m, KLE_T_MLA_KV_NORM, l), s->cache[l], s->kv_fmt, L0op, T, R, rope,
                             m->cfgf[KLE_CFGF_RMS_EPS]));
  KLE_TRY(b->mla_absorb(cx, (const float *)kle_derived_at(m, l, 0)->data, qf, qlat, T, Hm, nope, rope, R));
  if (s->budget) KLE_TRY(b->kv_note_rows(cx, s->rowinfo[l] + L0, T, (uint32_t)s->pos, s->pinning ? KLE_ROW_PINNED : 0u));
  /* a learned importance head scores each row once, from the token's own input */
  if (s->budget && s->policy == KLE_KV_LEARNED) {
    KLE_TRY(b->matmul(cx, W_(m, KLE_T_MLA_KV_IMPORTANCE, l), h, s->small, T));
    KLE_TRY(b->copy(cx, s->score[l] + L0, s->small, sizeof(float) * (size_t)T));
  }
  KLE_TRY(b->mla_attend(cx, qlat, s->cache[l], s->kv_fmt, L0op, T, Hm, Dc, R, scale, olat,
                        kle_kv_scored(s) ? s->score[l] : NULL, s->decay));
  KLE_TRY(b->mla_up_v(cx, (const float *)kle_derived_at(m, l, 1)->data, olat, ov, T, Hm, vh, R));
  return b->matmul(cx, W_(m, KLE_T_MLA_O, l), ov, y, T);
}

const kle_layer_kind kle_mixers[2] = {
    [KLE_LAYER_KDA] = {"kda", kda_expect, 4, kda_state_floats, no_cache, kda_derive, NULL, kda_forward},
    [KLE_LAYER_MLA] = {"mla", mla_expect, 0, no_state, mla_cache_row, mla_derive, NULL, mla_forward},
};

/* ---------------------------------------------------------------- feed-forward blocks */
/* y = down(silu(gate h) * up h), gate and up as one operation where the backend has it */
static int swiglu_mlp(kle_session *s, int rg, int ru, int rd, int l, const float *h, float *y, int T) {
  const kle_model *m = s->m;
  const int gu[2] = {rg, ru};
  const float *hx[2] = {h, h};
  float *out[2] = {s->a[0], s->a[1]};
  KLE_TRY(matmuls(m, 2, gu, l, hx, out, T));
  KLE_TRY(m->b->swiglu(m->ctx, s->a[0], s->a[1], s->a[2], (size_t)T * W_(m, rg, l)->rows));
  return m->b->matmul(m->ctx, W_(m, rd, l), s->a[2], y, T);
}

static int dense_expect(const kle_model *m, int role, int *rows, int *cols, int *anyfmt) {
  (void)anyfmt;
  const int D = m->cfg[KLE_CFG_HIDDEN], I = m->cfg[KLE_CFG_INTER];
  switch (role) {
  case KLE_T_FFN_GATE: case KLE_T_FFN_UP: return SHAPE(I, D);
  case KLE_T_FFN_DOWN: return SHAPE(D, I);
  default: return KLE_TENSOR_UNUSED;
  }
}

static int dense_forward(kle_session *s, int l, const float *h, float *y, int T) {
  return swiglu_mlp(s, KLE_T_FFN_GATE, KLE_T_FFN_UP, KLE_T_FFN_DOWN, l, h, y, T);
}

static int moe_expect(const kle_model *m, int role, int *rows, int *cols, int *anyfmt) {
  const int32_t *c = m->cfg;
  const int D = c[KLE_CFG_HIDDEN], E = c[KLE_CFG_EXPERTS], MI = c[KLE_CFG_MOE_INTER], SI = MI * c[KLE_CFG_SHARED_EXPERTS];
  switch (role) {
  case KLE_T_MOE_ROUTER: *anyfmt = 0; return SHAPE(E, D);
  /* a checkpoint without the selection bias routes as with a zero bias */
  case KLE_T_MOE_BIAS: (void)VEC(E); return KLE_TENSOR_OPTIONAL;
  case KLE_T_EXP_GATE: case KLE_T_EXP_UP: return SHAPE(MI, D);
  case KLE_T_EXP_DOWN: return SHAPE(D, MI);
  case KLE_T_SHEXP_GATE: case KLE_T_SHEXP_UP: return SI ? SHAPE(SI, D) : KLE_TENSOR_UNUSED;
  case KLE_T_SHEXP_DOWN: return SI ? SHAPE(D, SI) : KLE_TENSOR_UNUSED;
  default: return KLE_TENSOR_UNUSED;
  }
}

static int moe_forward(kle_session *s, int l, const float *h, float *y, int T) {
  const kle_model *m = s->m;
  const int32_t *c = m->cfg;
  const int D = c[KLE_CFG_HIDDEN], E = c[KLE_CFG_EXPERTS], K = c[KLE_CFG_EXPERTS_PER_TOK];
  const kle_backend *b = m->b;
  kle_backend_ctx *cx = m->ctx;
  const kle_tensor *bias = W_(m, KLE_T_MOE_BIAS, l);
  /* the router's logits in a[3]: the shared expert's MLP below takes a[0..2] and a[4] */
  KLE_TRY(b->matmul(cx, W_(m, KLE_T_MOE_ROUTER, l), h, s->a[3], T));
  /* renormalizing a single choice would turn its weight into 1; the reference leaves it */
  const int renorm = c[KLE_CFG_RENORM] && K > 1;
  KLE_TRY(b->moe_route(cx, s->a[3], bias->data ? (const float *)bias->data : NULL, T, E, K, c[KLE_CFG_N_GROUP],
                       c[KLE_CFG_TOPK_GROUP], c[KLE_CFG_ROUTER_ACT], renorm, m->cfgf[KLE_CFGF_ROUTED_SCALE], s->route_idx,
                       s->route_w));
  const int shared = c[KLE_CFG_SHARED_EXPERTS] > 0;
  int rc = KLE_ENOSYS;
  if (shared && b->moe_experts_shared)
    rc = b->moe_experts_shared(cx, m->expert_tabs[l], W_(m, KLE_T_SHEXP_GATE, l), W_(m, KLE_T_SHEXP_UP, l),
                               W_(m, KLE_T_SHEXP_DOWN, l), s->route_idx, s->route_w, h, y, T, K, D, c[KLE_CFG_MOE_INTER],
                               s->moe_scratch);
  if (rc != KLE_ENOSYS) return rc;
  KLE_TRY(b->moe_experts(cx, m->expert_tabs[l], s->route_idx, s->route_w, h, y, T, K, D, c[KLE_CFG_MOE_INTER],
                         s->moe_scratch));
  if (shared) {
    KLE_TRY(swiglu_mlp(s, KLE_T_SHEXP_GATE, KLE_T_SHEXP_UP, KLE_T_SHEXP_DOWN, l, h, s->a[4], T));
    KLE_TRY(b->add(cx, y, s->a[4], (size_t)T * D));
  }
  return KLE_OK;
}

/* the backend's handle on the layer's experts, once they are in its memory */
static int moe_prepare(kle_model *m, int l) {
  const int E = m->cfg[KLE_CFG_EXPERTS];
  return m->b->experts_table(m->ctx, &m->experts[(size_t)l * E * 3], E, &m->expert_tabs[l]);
}

const kle_layer_kind kle_ffn_dense = {"dense", dense_expect, 0, no_state, no_cache, NULL, NULL, dense_forward};
const kle_layer_kind kle_ffn_moe = {"moe", moe_expect, 0, no_state, no_cache, NULL, moe_prepare, moe_forward};
