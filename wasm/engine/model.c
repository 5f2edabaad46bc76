/*
 * model.c: the model's config, its tensor table and the checks on both. The host (TypeScript)
 * parses model files; this file decides what shape every tensor must have for a config, so a
 * file that disagrees is refused before a byte of it is used.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

int kle_mem_write(kle_addr dst, const uint8_t *src, size_t n) {
  if (!dst || (!src && n)) return KLE_EINVAL;
  if (n) memcpy((void *)dst, src, n);
  return KLE_OK;
}

int kle_mem_read(kle_addr src, uint8_t *dst, size_t n) {
  if (!src || (!dst && n)) return KLE_EINVAL;
  if (n) memcpy(dst, (const void *)src, n);
  return KLE_OK;
}

kle_addr kle_buffer_alloc(size_t n) { return (kle_addr)malloc(n ? n : 1); }
void kle_buffer_free(kle_addr p) { free((void *)p); }

static int n_layers(const kle_model *m) { return m->cfg[KLE_CFG_LAYERS]; }

int kle_layer_is_moe(const kle_model *m, int layer) {
  const int32_t *c = m->cfg;
  return c[KLE_CFG_EXPERTS] > 0 && layer >= c[KLE_CFG_FIRST_DENSE] &&
         layer % c[KLE_CFG_MOE_FREQ] == 0;
}

/* row 0 of the table is the global tensors, row l+1 layer l */
static kle_tensor *slot(const kle_model *m, int role, int layer, int expert) {
  if (KLE_IS_EXPERT_ROLE(role))
    return &m->experts[((size_t)layer * m->cfg[KLE_CFG_EXPERTS] + expert) * 3 +
                       (role - KLE_T_EXP_GATE)];
  return &m->t[(size_t)(layer + 1) * KLE_T_COUNT + role];
}

const kle_tensor *kle_tensor_at(const kle_model *m, int role, int layer) {
  return slot(m, role, layer, 0);
}

static int cfg_ok(const int32_t *c, const float *f, const int32_t *kinds) {
  for (int i = 0; i < KLE_CFG_N_INTS; i++)
    if (c[i] < 0) return 0;
  if (c[KLE_CFG_VOCAB] <= 0 || c[KLE_CFG_HIDDEN] <= 0 || c[KLE_CFG_LAYERS] <= 0) return 0;
  if (c[KLE_CFG_HIDDEN] % 4 || c[KLE_CFG_HIDDEN] > (1 << 16) || c[KLE_CFG_LAYERS] > 1024) return 0;
  int any_kda = 0, any_mla = 0, any_dense = 0;
  for (int l = 0; l < c[KLE_CFG_LAYERS]; l++) {
    if (kinds[l] != KLE_LAYER_KDA && kinds[l] != KLE_LAYER_MLA) return 0;
    any_kda |= kinds[l] == KLE_LAYER_KDA;
    any_mla |= kinds[l] == KLE_LAYER_MLA;
  }
  if (any_kda) {
    int H = c[KLE_CFG_KDA_HEADS], K = c[KLE_CFG_KDA_HEAD_DIM];
    if (H <= 0 || K <= 0 || K % 4 || K > KLE_MAX_HEAD_DIM || c[KLE_CFG_CONV] < 1 ||
        c[KLE_CFG_CONV] > 16)
      return 0;
  }
  if (any_mla) {
    if (c[KLE_CFG_MLA_HEADS] <= 0 || c[KLE_CFG_QK_NOPE] <= 0 || c[KLE_CFG_V_HEAD] <= 0 ||
        c[KLE_CFG_KV_RANK] <= 0 || c[KLE_CFG_KV_RANK] % 4 ||
        c[KLE_CFG_KV_RANK] + c[KLE_CFG_QK_ROPE] > KLE_MAX_HEAD_DIM)
      return 0;
  }
  if (c[KLE_CFG_MOE_FREQ] <= 0) return 0;
  for (int l = 0; l < c[KLE_CFG_LAYERS]; l++)
    any_dense |= !(c[KLE_CFG_EXPERTS] > 0 && l >= c[KLE_CFG_FIRST_DENSE] && l % c[KLE_CFG_MOE_FREQ] == 0);
  if (any_dense && c[KLE_CFG_INTER] <= 0) return 0;
  if (c[KLE_CFG_EXPERTS] > 0) {
    int E = c[KLE_CFG_EXPERTS], k = c[KLE_CFG_EXPERTS_PER_TOK], g = c[KLE_CFG_N_GROUP];
    if (k <= 0 || k > E || c[KLE_CFG_MOE_INTER] <= 0 || g <= 0 || E % g ||
        c[KLE_CFG_TOPK_GROUP] <= 0 || c[KLE_CFG_TOPK_GROUP] > g || k > c[KLE_CFG_TOPK_GROUP] * (E / g) ||
        (c[KLE_CFG_ROUTER_ACT] != KLE_ROUTE_SOFTMAX && c[KLE_CFG_ROUTER_ACT] != KLE_ROUTE_SIGMOID))
      return 0;
  }
  if (!(f[KLE_CFGF_RMS_EPS] > 0.0f) || !isfinite(f[KLE_CFGF_ROUTED_SCALE]) ||
      !(f[KLE_CFGF_GATE_LOWER_BOUND] <= 0.0f))
    return 0;
  return 1;
}

kle_model *kle_model_create(const int32_t *cfg, int n_cfg, const float *cfgf, int n_cfgf) {
  if (!cfg || !cfgf || n_cfg < KLE_CFG_N_INTS || n_cfgf != KLE_CFGF_N) return NULL;
  int L = cfg[KLE_CFG_LAYERS];
  if (L <= 0 || L > 1024 || n_cfg != KLE_CFG_N_INTS + L) return NULL;
  if (!cfg_ok(cfg, cfgf, cfg + KLE_CFG_N_INTS)) return NULL;
  kle_model *m = calloc(1, sizeof *m);
  if (!m) return NULL;
  memcpy(m->cfg, cfg, sizeof m->cfg);
  memcpy(m->cfgf, cfgf, sizeof m->cfgf);
  size_t E = (size_t)cfg[KLE_CFG_EXPERTS];
  m->layer_kind = malloc(sizeof(int32_t) * L);
  m->t = calloc((size_t)(L + 1) * KLE_T_COUNT, sizeof(kle_tensor));
  m->experts = calloc((size_t)L * (E ? E : 1) * 3, sizeof(kle_tensor));
  m->conv_t = calloc((size_t)L * 3, sizeof(float *));
  m->w_uk = calloc((size_t)L, sizeof(float *));
  m->w_uv = calloc((size_t)L, sizeof(float *));
  if (!m->layer_kind || !m->t || !m->experts || !m->conv_t || !m->w_uk || !m->w_uv) {
    kle_model_free(m);
    return NULL;
  }
  memcpy(m->layer_kind, cfg + KLE_CFG_N_INTS, sizeof(int32_t) * L);
  return m;
}

static void free_tensor(kle_tensor *t) {
  free(t->data);
  t->data = NULL;
}

void kle_model_free(kle_model *m) {
  if (!m) return;
  int L = n_layers(m), E = m->cfg[KLE_CFG_EXPERTS];
  if (m->t)
    for (size_t i = 0; i < (size_t)(L + 1) * KLE_T_COUNT; i++) free_tensor(&m->t[i]);
  if (m->experts)
    for (size_t i = 0; i < (size_t)L * (E ? E : 1) * 3; i++) free_tensor(&m->experts[i]);
  if (m->conv_t)
    for (int i = 0; i < L * 3; i++) free(m->conv_t[i]);
  if (m->w_uk)
    for (int l = 0; l < L; l++) free(m->w_uk[l]);
  if (m->w_uv)
    for (int l = 0; l < L; l++) free(m->w_uv[l]);
  free(m->layer_kind);
  free(m->t);
  free(m->experts);
  free(m->conv_t);
  free(m->w_uk);
  free(m->w_uv);
  free(m);
}

/* The shape a (role, layer, expert) must have: KLE_TENSOR_* plus rows, cols, any-format flag. */
static int expect(const kle_model *m, int role, int layer, int expert, int *rows, int *cols,
                  int *anyfmt) {
  const int32_t *c = m->cfg;
  const int D = c[KLE_CFG_HIDDEN];
  *anyfmt = 1;
#define SHAPE(r, cc) (*rows = (r), *cols = (cc), KLE_TENSOR_REQUIRED)
#define VEC(n) (*anyfmt = 0, *rows = 1, *cols = (n), KLE_TENSOR_REQUIRED)
  if (layer == -1) {
    switch (role) {
    case KLE_T_TOK_EMBD: return SHAPE(c[KLE_CFG_VOCAB], D);
    case KLE_T_OUT_NORM: return VEC(D);
    case KLE_T_LM_HEAD:
      (void)SHAPE(c[KLE_CFG_VOCAB], D);
      return c[KLE_CFG_TIED] ? KLE_TENSOR_OPTIONAL : KLE_TENSOR_REQUIRED;
    default: return KLE_TENSOR_UNUSED;
    }
  }
  if (layer < 0 || layer >= n_layers(m)) return KLE_TENSOR_UNUSED;
  if (role == KLE_T_ATTN_NORM || role == KLE_T_FFN_NORM) return VEC(D);
  const int kda = m->layer_kind[layer] == KLE_LAYER_KDA;
  const int H = c[KLE_CFG_KDA_HEADS], dk = c[KLE_CFG_KDA_HEAD_DIM], HK = H * dk;
  const int full = c[KLE_CFG_FULL_RANK_GATE];
  if (kda) {
    switch (role) {
    case KLE_T_KDA_Q: case KLE_T_KDA_K: case KLE_T_KDA_V: return SHAPE(HK, D);
    case KLE_T_KDA_CONV_Q: case KLE_T_KDA_CONV_K: case KLE_T_KDA_CONV_V:
      *anyfmt = 0;
      *rows = HK;
      *cols = c[KLE_CFG_CONV];
      return KLE_TENSOR_REQUIRED;
    case KLE_T_KDA_F_A: case KLE_T_KDA_G_A: return full ? KLE_TENSOR_UNUSED : SHAPE(dk, D);
    case KLE_T_KDA_F_B: case KLE_T_KDA_G_B: return SHAPE(HK, full ? D : dk);
    case KLE_T_KDA_A_LOG: return VEC(H);
    case KLE_T_KDA_DT_BIAS: return VEC(HK);
    case KLE_T_KDA_BETA: return SHAPE(H, D);
    case KLE_T_KDA_O_NORM: return VEC(dk);
    case KLE_T_KDA_O: return SHAPE(D, HK);
    default: break;
    }
  } else {
    const int Hm = c[KLE_CFG_MLA_HEADS], nope = c[KLE_CFG_QK_NOPE], rope = c[KLE_CFG_QK_ROPE];
    const int vh = c[KLE_CFG_V_HEAD], R = c[KLE_CFG_KV_RANK];
    switch (role) {
    case KLE_T_MLA_Q: return SHAPE(Hm * (nope + rope), D);
    case KLE_T_MLA_KV_A: return SHAPE(R + rope, D);
    case KLE_T_MLA_KV_NORM: return VEC(R);
    case KLE_T_MLA_KV_B: return SHAPE(Hm * (nope + vh), R);
    case KLE_T_MLA_O: return SHAPE(D, Hm * vh);
    default: break;
    }
  }
  if (!kle_layer_is_moe(m, layer)) {
    const int I = c[KLE_CFG_INTER];
    switch (role) {
    case KLE_T_FFN_GATE: case KLE_T_FFN_UP: return SHAPE(I, D);
    case KLE_T_FFN_DOWN: return SHAPE(D, I);
    default: return KLE_TENSOR_UNUSED;
    }
  }
  const int E = c[KLE_CFG_EXPERTS], MI = c[KLE_CFG_MOE_INTER], SI = MI * c[KLE_CFG_SHARED_EXPERTS];
  if (KLE_IS_EXPERT_ROLE(role) && (expert < 0 || expert >= E)) return KLE_TENSOR_UNUSED;
  switch (role) {
  case KLE_T_MOE_ROUTER: *anyfmt = 0; *rows = E; *cols = D; return KLE_TENSOR_REQUIRED;
  case KLE_T_MOE_BIAS: (void)VEC(E); return KLE_TENSOR_OPTIONAL;
  case KLE_T_EXP_GATE: case KLE_T_EXP_UP: return SHAPE(MI, D);
  case KLE_T_EXP_DOWN: return SHAPE(D, MI);
  case KLE_T_SHEXP_GATE: case KLE_T_SHEXP_UP: return SI ? SHAPE(SI, D) : KLE_TENSOR_UNUSED;
  case KLE_T_SHEXP_DOWN: return SI ? SHAPE(D, SI) : KLE_TENSOR_UNUSED;
  default: return KLE_TENSOR_UNUSED;
  }
#undef SHAPE
#undef VEC
}

int kle_model_tensor_expect(kle_model *m, int role, int layer, int expert, int32_t *out) {
  if (!m || !out || role < 0 || role >= KLE_T_COUNT) return KLE_EINVAL;
  int rows = 0, cols = 0, anyfmt = 0;
  int r = expect(m, role, layer, expert, &rows, &cols, &anyfmt);
  out[0] = rows;
  out[1] = cols;
  out[2] = anyfmt;
  return r;
}

kle_addr kle_model_tensor(kle_model *m, int role, int layer, int expert, int fmt, int rows,
                          int cols) {
  if (!m || m->finalized || role < 0 || role >= KLE_T_COUNT) return 0;
  int er, ec, anyfmt;
  if (expect(m, role, layer, expert, &er, &ec, &anyfmt) == KLE_TENSOR_UNUSED) return 0;
  if (rows != er || cols != ec || (!anyfmt && fmt != KLE_W_F32)) return 0;
  long rb = kle_row_bytes(fmt, cols);
  if (rb <= 0) return 0;
  kle_tensor *t = slot(m, role, layer, KLE_IS_EXPERT_ROLE(role) ? expert : 0);
  free_tensor(t);
  size_t bytes = (size_t)rb * (size_t)rows;
  t->data = malloc(bytes ? bytes : 1);
  if (!t->data) return 0;
  t->fmt = fmt;
  t->rows = rows;
  t->cols = cols;
  t->bytes = (long)bytes;
  return (kle_addr)t->data;
}

long kle_model_bytes(kle_model *m) {
  if (!m) return 0;
  long total = 0;
  int L = n_layers(m), E = m->cfg[KLE_CFG_EXPERTS];
  for (size_t i = 0; i < (size_t)(L + 1) * KLE_T_COUNT; i++) total += m->t[i].data ? m->t[i].bytes : 0;
  for (size_t i = 0; i < (size_t)L * (E ? E : 1) * 3; i++)
    total += m->experts[i].data ? m->experts[i].bytes : 0;
  return total;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
  return h;
}

static uint64_t fingerprint_tensor(uint64_t h, const kle_tensor *t, int role, int layer, int e) {
  int32_t id[6] = {role, layer, e, t->fmt, t->rows, t->cols};
  h = fnv(h, id, sizeof id);
  /* 64 evenly spaced bytes: cheap, and enough to tell two models' weights apart */
  for (int i = 0; i < 64 && t->bytes > 0; i++) h = fnv(h, t->data + (size_t)((t->bytes - 1) * i / 63), 1);
  return h;
}

/* a tensor as f32 (dequantized if stored quantized); NULL when out of memory */
static float *to_f32(const kle_tensor *t) {
  float *out = malloc(sizeof(float) * (size_t)t->rows * t->cols);
  if (!out) return NULL;
  long rb = kle_row_bytes(t->fmt, t->cols);
  for (int r = 0; r < t->rows; r++)
    kle_dequantize(t->fmt, t->data + (size_t)rb * r, out + (size_t)r * t->cols, t->cols);
  return out;
}

int kle_model_finalize(kle_model *m) {
  if (!m) return KLE_EINVAL;
  if (m->finalized) return KLE_OK;
  const int L = n_layers(m), E = m->cfg[KLE_CFG_EXPERTS];
  uint64_t h = 0xcbf29ce484222325ull;
  h = fnv(h, m->cfg, sizeof m->cfg);
  h = fnv(h, m->cfgf, sizeof m->cfgf);
  h = fnv(h, m->layer_kind, sizeof(int32_t) * L);
  for (int layer = -1; layer < L; layer++)
    for (int role = 0; role < KLE_T_COUNT; role++) {
      int n_e = KLE_IS_EXPERT_ROLE(role) ? E : 1;
      for (int e = 0; e < n_e; e++) {
        int rows, cols, anyfmt;
        int need = expect(m, role, layer, e, &rows, &cols, &anyfmt);
        if (need == KLE_TENSOR_UNUSED) continue;
        const kle_tensor *t = slot(m, role, layer, e);
        if (!t->data) {
          if (need == KLE_TENSOR_REQUIRED) return KLE_EMISSING;
          continue;
        }
        h = fingerprint_tensor(h, t, role, layer, e);
      }
    }
  for (int l = 0; l < L; l++) {
    if (m->layer_kind[l] == KLE_LAYER_KDA) {
      /* [C, W] -> [W, C]: the conv kernel reads one tap across all channels at a time */
      for (int i = 0; i < 3; i++) {
        const kle_tensor *t = kle_tensor_at(m, KLE_T_KDA_CONV_Q + i, l);
        float *wt = malloc(sizeof(float) * (size_t)t->rows * t->cols);
        if (!wt) return KLE_ENOMEM;
        const float *w = (const float *)t->data;
        for (int ch = 0; ch < t->rows; ch++)
          for (int tap = 0; tap < t->cols; tap++) wt[(size_t)tap * t->rows + ch] = w[(size_t)ch * t->cols + tap];
        free(m->conv_t[l * 3 + i]);
        m->conv_t[l * 3 + i] = wt;
      }
    } else {
      /* kv_b rows per head: nope rows of W_uk then v rows of W_uv, each over the latent */
      const int Hm = m->cfg[KLE_CFG_MLA_HEADS], nope = m->cfg[KLE_CFG_QK_NOPE];
      const int vh = m->cfg[KLE_CFG_V_HEAD], R = m->cfg[KLE_CFG_KV_RANK];
      float *kvb = to_f32(kle_tensor_at(m, KLE_T_MLA_KV_B, l));
      float *uk = malloc(sizeof(float) * (size_t)Hm * nope * R);
      float *uv = malloc(sizeof(float) * (size_t)Hm * vh * R);
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
      free(m->w_uk[l]);
      free(m->w_uv[l]);
      m->w_uk[l] = uk;
      m->w_uv[l] = uv;
    }
  }
  m->fingerprint = h;
  m->finalized = 1;
  return KLE_OK;
}
