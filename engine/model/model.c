/*
 * model.c: the model's config, its tensor table and the checks on both. The host (TypeScript)
 * parses model files; this file decides what shape every tensor must have for a config (asking
 * each layer's kind, layers.c), so a file that disagrees is refused before a byte of it is used.
 * Tensors arrive in host memory; finalize derives what the layers need and places everything
 * in the backend's memory.
 */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "pool.h"

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

kle_addr kle_buffer_alloc(size_t n) { return (kle_addr)kle_host_alloc_n(n ? n : 1, 1); }

void *kle_host_alloc_n(uint64_t count, uint64_t size) {
  const uint64_t n = kle_mul64(count, size);
  return n > KLE_MAX_ALLOC ? NULL : malloc(n ? (size_t)n : 1);
}

void *kle_backend_alloc_n(const kle_model *m, uint64_t count, uint64_t size) {
  const uint64_t n = kle_mul64(count, size);
  return n > KLE_MAX_ALLOC ? NULL : m->b->alloc(m->ctx, (size_t)n);
}
void kle_buffer_free(kle_addr p) { free((void *)p); }

static int n_layers(const kle_model *m) { return m->cfg[KLE_CFG_LAYERS]; }

static int is_moe(const int32_t *c, int layer) {
  return c[KLE_CFG_EXPERTS] > 0 && layer >= c[KLE_CFG_FIRST_DENSE] && layer % c[KLE_CFG_MOE_FREQ] == 0;
}

const kle_layer_kind *kle_mixer_of(const kle_model *m, int layer) { return &kle_mixers[m->layer_kind[layer]]; }
const kle_layer_kind *kle_ffn_of(const kle_model *m, int layer) {
  return is_moe(m->cfg, layer) ? &kle_ffn_moe : &kle_ffn_dense;
}

static size_t expert_slots(const kle_model *m) {
  const int E = m->cfg[KLE_CFG_EXPERTS];
  return (size_t)n_layers(m) * (E ? E : 1) * 3;
}

/* row 0 of the table is the global tensors, row l+1 layer l */
kle_tensor *kle_tensor_slot(const kle_model *m, int role, int layer, int expert) {
  if (KLE_IS_EXPERT_ROLE(role))
    return &m->experts[((size_t)layer * m->cfg[KLE_CFG_EXPERTS] + expert) * 3 + (role - KLE_T_EXP_GATE)];
  return &m->t[(size_t)(layer + 1) * KLE_T_COUNT + role];
}

const kle_tensor *kle_tensor_at(const kle_model *m, int role, int layer) { return kle_tensor_slot(m, role, layer, 0); }
kle_tensor *kle_derived_slot(kle_model *m, int layer, int i) { return &m->derived[(size_t)layer * KLE_MAX_DERIVED + i]; }
const kle_tensor *kle_derived_at(const kle_model *m, int layer, int i) {
  return &m->derived[(size_t)layer * KLE_MAX_DERIVED + i];
}

/* widest row any buffer holds (elements): far above real models, low enough that no size made
 * from a row, a batch and a few more config numbers can overflow before the checked helpers */
#define KLE_MAX_WIDTH (1 << 24)

static int width_ok(int64_t n) { return n > 0 && n <= KLE_MAX_WIDTH; }

static int cfg_ok(const int32_t *c, const float *f, const int32_t *kinds) {
  for (int i = 0; i < KLE_CFG_N_INTS; i++)
    if (c[i] < 0 || c[i] > KLE_MAX_WIDTH) return 0;
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
    if (H <= 0 || K <= 0 || K % 4 || K > KLE_MAX_HEAD_DIM || c[KLE_CFG_CONV] < 1 || c[KLE_CFG_CONV] > 16 ||
        c[KLE_CFG_KDA_GATE_PER_HEAD] > 1 || !width_ok((int64_t)H * K))
      return 0;
  }
  if (any_mla) {
    const int64_t Hm = c[KLE_CFG_MLA_HEADS], Dq = (int64_t)c[KLE_CFG_QK_NOPE] + c[KLE_CFG_QK_ROPE];
    const int64_t Dc = (int64_t)c[KLE_CFG_KV_RANK] + c[KLE_CFG_QK_ROPE];
    if (Hm <= 0 || c[KLE_CFG_QK_NOPE] <= 0 || c[KLE_CFG_V_HEAD] <= 0 || c[KLE_CFG_KV_RANK] <= 0 ||
        c[KLE_CFG_KV_RANK] % 4 || Dc > KLE_MAX_HEAD_DIM || !width_ok(Hm * Dq) || !width_ok(Hm * Dc) ||
        !width_ok(Hm * ((int64_t)c[KLE_CFG_QK_NOPE] + c[KLE_CFG_V_HEAD])))
      return 0;
  }
  if (c[KLE_CFG_MOE_FREQ] <= 0 || c[KLE_CFG_KV_IMPORTANCE] > 1) return 0;
  for (int l = 0; l < c[KLE_CFG_LAYERS]; l++) any_dense |= !is_moe(c, l);
  if (any_dense && c[KLE_CFG_INTER] <= 0) return 0;
  if (c[KLE_CFG_EXPERTS] > 0) {
    int E = c[KLE_CFG_EXPERTS], k = c[KLE_CFG_EXPERTS_PER_TOK], g = c[KLE_CFG_N_GROUP];
    if (E > (1 << 16) || !width_ok((int64_t)c[KLE_CFG_MOE_INTER] * (c[KLE_CFG_SHARED_EXPERTS] + 1))) return 0;
    if (k <= 0 || k > E || c[KLE_CFG_MOE_INTER] <= 0 || g <= 0 || E % g || c[KLE_CFG_TOPK_GROUP] <= 0 ||
        c[KLE_CFG_TOPK_GROUP] > g || k > c[KLE_CFG_TOPK_GROUP] * (E / g) ||
        (c[KLE_CFG_ROUTER_ACT] != KLE_ROUTE_SOFTMAX && c[KLE_CFG_ROUTER_ACT] != KLE_ROUTE_SIGMOID))
      return 0;
  }
  if (!(f[KLE_CFGF_RMS_EPS] > 0.0f) || !isfinite(f[KLE_CFGF_ROUTED_SCALE]) || !(f[KLE_CFGF_GATE_LOWER_BOUND] <= 0.0f))
    return 0;
  return 1;
}

kle_model *kle_model_create(const int32_t *cfg, int n_cfg, const float *cfgf, int n_cfgf) {
  if (!cfg || !cfgf || n_cfg < KLE_CFG_N_INTS || n_cfgf != KLE_CFGF_N) return NULL;
  int L = cfg[KLE_CFG_LAYERS];
  if (L <= 0 || L > 1024 || n_cfg != KLE_CFG_N_INTS + L) return NULL;
  if (!cfg_ok(cfg, cfgf, cfg + KLE_CFG_N_INTS)) return NULL;
  const kle_backend *b = kle_backend_get();
  if (b->supports && !b->supports(cfg, cfg + KLE_CFG_N_INTS)) return NULL;
  kle_model *m = calloc(1, sizeof *m);
  if (!m) return NULL;
  memcpy(m->cfg, cfg, sizeof m->cfg);
  memcpy(m->cfgf, cfgf, sizeof m->cfgf);
  m->b = b;
  m->layer_kind = malloc(sizeof(int32_t) * L);
  m->t = calloc((size_t)(L + 1) * KLE_T_COUNT, sizeof(kle_tensor));
  m->experts = calloc(expert_slots(m), sizeof(kle_tensor));
  m->derived = calloc((size_t)L * KLE_MAX_DERIVED, sizeof(kle_tensor));
  m->expert_tabs = calloc((size_t)L, sizeof(void *));
  m->ctx = m->b->open();
  if (!m->layer_kind || !m->t || !m->experts || !m->derived || !m->expert_tabs || !m->ctx) {
    kle_model_free(m);
    return NULL;
  }
  memcpy(m->layer_kind, cfg + KLE_CFG_N_INTS, sizeof(int32_t) * L);
  return m;
}

int kle_derive_reads(int role) {
  return role == KLE_T_MLA_KV_B || role == KLE_T_KDA_CONV_Q || role == KLE_T_KDA_CONV_K || role == KLE_T_KDA_CONV_V;
}

static void free_tensor(kle_model *m, kle_tensor *t) {
  if (t->placed)
    m->b->release(m->ctx, t->data);
  else
    free(t->data);
  t->data = NULL;
  t->placed = 0;
  t->synth = 0;
  t->sampled = 0;
}

void kle_model_free(kle_model *m) {
  if (!m) return;
  const int L = n_layers(m);
  if (m->expert_tabs && m->ctx)
    for (int l = 0; l < L; l++)
      if (m->expert_tabs[l]) m->b->experts_table_free(m->ctx, m->expert_tabs[l]);
  if (m->t)
    for (size_t i = 0; i < (size_t)(L + 1) * KLE_T_COUNT; i++) free_tensor(m, &m->t[i]);
  if (m->experts)
    for (size_t i = 0; i < expert_slots(m); i++) free_tensor(m, &m->experts[i]);
  if (m->derived)
    for (size_t i = 0; i < (size_t)L * KLE_MAX_DERIVED; i++) free_tensor(m, &m->derived[i]);
  if (m->ctx) {
    m->b->release(m->ctx, m->arena);
    m->b->release(m->ctx, m->batch_logits);
    m->b->close(m->ctx);
  }
  free(m->layer_kind);
  free(m->t);
  free(m->experts);
  free(m->derived);
  free(m->expert_tabs);
  free(m);
}

/* The shape a (role, layer, expert) must have: KLE_TENSOR_* plus rows, cols, any-format flag. */
int kle_model_expect(const kle_model *m, int role, int layer, int expert, int *rows, int *cols, int *anyfmt) {
  const int32_t *c = m->cfg;
  const int D = c[KLE_CFG_HIDDEN];
  *anyfmt = 1;
  *rows = *cols = 0;
  if (layer == -1) {
    switch (role) {
    case KLE_T_TOK_EMBD: *rows = c[KLE_CFG_VOCAB]; *cols = D; return KLE_TENSOR_REQUIRED;
    case KLE_T_OUT_NORM: *anyfmt = 0; *rows = 1; *cols = D; return KLE_TENSOR_REQUIRED;
    case KLE_T_LM_HEAD:
      *rows = c[KLE_CFG_VOCAB];
      *cols = D;
      return c[KLE_CFG_TIED] ? KLE_TENSOR_OPTIONAL : KLE_TENSOR_REQUIRED;
    default: return KLE_TENSOR_UNUSED;
    }
  }
  if (layer < 0 || layer >= n_layers(m)) return KLE_TENSOR_UNUSED;
  if (role == KLE_T_ATTN_NORM || role == KLE_T_FFN_NORM) {
    *anyfmt = 0;
    *rows = 1;
    *cols = D;
    return KLE_TENSOR_REQUIRED;
  }
  if (KLE_IS_EXPERT_ROLE(role) && (expert < 0 || expert >= c[KLE_CFG_EXPERTS])) return KLE_TENSOR_UNUSED;
  int r = kle_mixer_of(m, layer)->expect(m, role, rows, cols, anyfmt);
  if (r != KLE_TENSOR_UNUSED) return r;
  *anyfmt = 1;
  return kle_ffn_of(m, layer)->expect(m, role, rows, cols, anyfmt);
}

int kle_model_tensor_expect(kle_model *m, int role, int layer, int expert, int32_t *out) {
  if (!m || !out || role < 0 || role >= KLE_T_COUNT) return KLE_EINVAL;
  int rows = 0, cols = 0, anyfmt = 0;
  int r = kle_model_expect(m, role, layer, expert, &rows, &cols, &anyfmt);
  out[0] = rows;
  out[1] = cols;
  out[2] = anyfmt;
  return r;
}

kle_addr kle_model_tensor(kle_model *m, int role, int layer, int expert, int fmt, int rows, int cols) {
  if (!m || m->finalized || role < 0 || role >= KLE_T_COUNT) return 0;
  int er, ec, anyfmt;
  if (kle_model_expect(m, role, layer, expert, &er, &ec, &anyfmt) == KLE_TENSOR_UNUSED) return 0;
  if (rows != er || cols != ec || (!anyfmt && fmt != KLE_W_F32)) return 0;
  long rb = kle_row_bytes(fmt, cols);
  if (rb <= 0) return 0;
  kle_tensor *t = kle_tensor_slot(m, role, layer, KLE_IS_EXPERT_ROLE(role) ? expert : 0);
  free_tensor(m, t);
  t->data = kle_host_alloc_n((uint64_t)rows, (uint64_t)rb); /* 4 GiB of one tensor must not wrap to a small block */
  if (!t->data) return 0;
  t->fmt = fmt;
  t->rows = rows;
  t->cols = cols;
  t->bytes = (long)kle_mul64((uint64_t)rows, (uint64_t)rb);
  return (kle_addr)t->data;
}

long kle_model_bytes(kle_model *m) {
  if (!m) return 0;
  uint64_t total = 0;
  const size_t nt = (size_t)(n_layers(m) + 1) * KLE_T_COUNT;
  for (size_t i = 0; i < nt; i++) total = kle_add64(total, m->t[i].data ? (uint64_t)m->t[i].bytes : 0);
  for (size_t i = 0; i < expert_slots(m); i++) total = kle_add64(total, m->experts[i].data ? (uint64_t)m->experts[i].bytes : 0);
  /* the derived weights count on backends that drop the tensors they came from */
  if (!m->b->host_memory)
    for (size_t i = 0; i < (size_t)n_layers(m) * KLE_MAX_DERIVED; i++)
      total = kle_add64(total, m->derived[i].data ? (uint64_t)m->derived[i].bytes : 0);
  return total > (uint64_t)LONG_MAX ? LONG_MAX : (long)total; /* wasm's long is 32 bits */
}

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
  return h;
}

/* 64 evenly spaced bytes: cheap, and enough to tell two models' weights apart; the offsets in
 * 64 bits, since wasm's long is 32 and (bytes - 1) * 63 passes 2^31 from a 35 MB tensor on */
static size_t take_sample(const kle_tensor *t, uint8_t *out) {
  if (t->bytes <= 0) return 0;
  for (int i = 0; i < 64; i++) out[i] = t->data[(size_t)((uint64_t)(t->bytes - 1) * (uint64_t)i / 63u)];
  return 64;
}

static uint64_t fingerprint_tensor(uint64_t h, const kle_tensor *t, int role, int layer, int e) {
  int32_t id[6] = {role, layer, e, t->fmt, t->rows, t->cols};
  h = fnv(h, id, sizeof id);
  if (t->synth) return fnv(h, &t->synth, sizeof t->synth); /* in device memory: its seed stands for it */
  if (t->sampled) return fnv(h, t->sample, t->bytes > 0 ? 64 : 0);
  uint8_t sample[64];
  return fnv(h, sample, take_sample(t, sample));
}

float *kle_tensor_to_f32(const kle_tensor *t) {
  float *out = kle_host_alloc_n(kle_mul64((uint64_t)t->rows, (uint64_t)t->cols), sizeof(float));
  if (!out) return NULL;
  long rb = kle_row_bytes(t->fmt, t->cols);
  for (int r = 0; r < t->rows; r++) kle_dequantize(t->fmt, t->data + (size_t)rb * r, out + (size_t)r * t->cols, t->cols);
  return out;
}

static int place(kle_model *m, kle_tensor *t) {
  if (!t->data || t->placed) return KLE_OK;
  KLE_TRY(m->b->place(m->ctx, t));
  t->placed = 1;
  return KLE_OK;
}

int kle_model_threads(kle_model *m, int n) {
  if (!m || n < 0 || n > 256) return KLE_EINVAL;
  return m->b->threads ? m->b->threads(m->ctx, n) : 1;
}

int kle_model_precision(kle_model *m, int mode) {
  if (!m || mode < 0 || mode > KLE_PRECISION_BF16) return KLE_EINVAL;
  if (m->b->precision) return m->b->precision(m->ctx, mode);
  return mode == KLE_PRECISION_BF16 ? KLE_ENOSYS : KLE_PRECISION_F32;
}

kle_addr kle_model_thread_pool(kle_model *m, int32_t *starts) {
  int k = 0;
  void *p = m && m->b->host_threads ? m->b->host_threads(m->ctx, starts ? &k : NULL) : NULL;
  if (starts) *starts = p ? k : 0;
  return (kle_addr)p;
}

int kle_thread_serve(kle_addr pool) { return kle_pool_serve((kle_pool *)pool); }

int kle_thread_serving(kle_addr pool) { return kle_pool_serving((kle_pool *)pool); }

int kle_model_tensor_ready(kle_model *m, int role, int layer, int expert) {
  if (!m || m->finalized || role < 0 || role >= KLE_T_COUNT) return KLE_EINVAL;
  int rows, cols, anyfmt;
  if (kle_model_expect(m, role, layer, expert, &rows, &cols, &anyfmt) == KLE_TENSOR_UNUSED) return KLE_EINVAL;
  kle_tensor *t = kle_tensor_slot(m, role, layer, KLE_IS_EXPERT_ROLE(role) ? expert : 0);
  if (!t->data) return KLE_EINVAL;
  /* the host's memory is the backend's, and derive reads its sources there at finalize */
  if (m->b->host_memory || t->placed || kle_derive_reads(role)) return KLE_OK;
  take_sample(t, t->sample);
  t->sampled = 1;
  return place(m, t);
}

int kle_model_finalize(kle_model *m) {
  if (!m) return KLE_EINVAL;
  if (m->finalized) return m->finalized > 0 ? KLE_OK : KLE_EINVAL;
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
        int need = kle_model_expect(m, role, layer, e, &rows, &cols, &anyfmt);
        if (need == KLE_TENSOR_UNUSED) continue;
        const kle_tensor *t = kle_tensor_slot(m, role, layer, e);
        if (!t->data) {
          if (need == KLE_TENSOR_REQUIRED) return KLE_EMISSING;
          continue;
        }
        h = fingerprint_tensor(h, t, role, layer, e);
      }
    }
  /* from here a failure leaves a model that is only good for kle_model_free */
  m->finalized = -1;
  for (int l = 0; l < L; l++)
    if (kle_mixer_of(m, l)->derive) KLE_TRY(kle_mixer_of(m, l)->derive(m, l));
  const size_t nt = (size_t)(L + 1) * KLE_T_COUNT;
  for (size_t i = 0; i < nt; i++) KLE_TRY(place(m, &m->t[i]));
  for (size_t i = 0; i < expert_slots(m); i++) KLE_TRY(place(m, &m->experts[i]));
  for (size_t i = 0; i < (size_t)L * KLE_MAX_DERIVED; i++) KLE_TRY(place(m, &m->derived[i]));
  for (int l = 0; l < L; l++) {
    const kle_layer_kind *kinds[2] = {kle_mixer_of(m, l), kle_ffn_of(m, l)};
    for (int i = 0; i < 2; i++)
      if (kinds[i]->prepare) KLE_TRY(kinds[i]->prepare(m, l));
  }
  KLE_TRY(m->b->sync(m->ctx));
  m->fingerprint = h;
  m->finalized = 1;
  return KLE_OK;
}
