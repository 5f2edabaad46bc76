/*
 * synth.c: a synthetic model and session state made where they live (synth.h has the values).
 *
 * kle_model_synthesize gives every tensor the config expects seeded random values, scaled as
 * src/weights/synthetic.ts scales a checkpoint's (matrices by 1/sqrt(fan-in), norms near 1, decay
 * rates spread over 1..16), then the host finalizes the model as after a load: the same weight
 * table, derived weights and kernels. Matrices are made in the backend's memory (on a GPU the
 * host never holds them); tensors the host must read (f32 vectors, the kv_b that MLA's derive
 * splits) are made in host memory from the same function and placed as loaded ones are.
 */
#include <limits.h>
#include <math.h>

#include "engine.h"
#include "synth.h"

/* what the values of a role look like: offset + scale * r, r uniform in [-1, 1) */
static void init_of(const kle_model *m, int role, int cols, float *offset, float *scale) {
  float gain = 1.0f;
  *offset = 0.0f;
  switch (role) {
  case KLE_T_TOK_EMBD: *scale = 1.0f; return;
  case KLE_T_OUT_NORM: case KLE_T_ATTN_NORM: case KLE_T_FFN_NORM: case KLE_T_KDA_O_NORM: case KLE_T_MLA_KV_NORM:
    *offset = 1.0f;
    *scale = 0.1f;
    return;
  case KLE_T_KDA_CONV_Q: case KLE_T_KDA_CONV_K: case KLE_T_KDA_CONV_V: *scale = 0.5f; return;
  case KLE_T_KDA_DT_BIAS: *offset = -1.0f; *scale = 1.0f; return;
  case KLE_T_MOE_ROUTER: *scale = 2.0f / sqrtf((float)m->cfg[KLE_CFG_HIDDEN]); return;
  case KLE_T_MOE_BIAS: *scale = 0.05f; return;
  case KLE_T_LM_HEAD: gain = 4.0f; break;
  /* larger attention logits: a random model's attention is then not flat */
  case KLE_T_MLA_Q: case KLE_T_MLA_KV_A: gain = 2.0f; break;
  default: break;
  }
  *scale = gain * sqrtf(3.0f) / sqrtf((float)cols);
}


/* The tensors synthesize makes: fn(t's slot, role, layer, expert, rows, cols, anyfmt) per tensor. */
typedef int (*each_fn)(kle_model *m, void *arg, int role, int layer, int e, int rows, int cols, int anyfmt);
static int each_tensor(kle_model *m, void *arg, each_fn fn) {
  const int L = m->cfg[KLE_CFG_LAYERS], E = m->cfg[KLE_CFG_EXPERTS];
  for (int layer = -1; layer < L; layer++)
    for (int role = 0; role < KLE_T_COUNT; role++) {
      const int n_e = KLE_IS_EXPERT_ROLE(role) ? E : 1;
      for (int e = 0; e < n_e; e++) {
        int rows, cols, anyfmt;
        /* optional tensors (a tied LM head, the MoE selection bias) are left out, as a checkpoint may */
        if (kle_model_expect(m, role, layer, e, &rows, &cols, &anyfmt) != KLE_TENSOR_REQUIRED) continue;
        KLE_TRY(fn(m, arg, role, layer, e, rows, cols, anyfmt));
      }
    }
  return KLE_OK;
}

static int add_bytes(kle_model *m, void *arg, int role, int layer, int e, int rows, int cols, int anyfmt) {
  (void)layer;
  (void)e;
  const int fmt = anyfmt ? *(int *)arg : KLE_W_F32;
  uint64_t *sum = (uint64_t *)arg + 1;
  const long rb = kle_row_bytes(fmt, cols);
  if (rb < 0) return KLE_EINVAL; /* a Q8_0 matrix whose rows are not whole blocks */
  *sum = kle_add64(*sum, kle_mul64((uint64_t)rows, (uint64_t)rb));
  /* the f32 copies derive makes: MLA's split kv_b and KDA's transposed conv taps */
  if (kle_derive_reads(role))
    *sum = kle_add64(*sum, kle_mul64(kle_mul64((uint64_t)rows, (uint64_t)cols), 4));
  (void)m;
  return KLE_OK;
}

/* bytes of backend memory a synthetic model's weights take with matrices in fmt */
static int planned(kle_model *m, int fmt, uint64_t *bytes) {
  uint64_t acc[2] = {(uint64_t)fmt, 0};
  KLE_TRY(each_tensor(m, acc, add_bytes));
  *bytes = acc[1];
  return KLE_OK;
}

static int synth_format(int fmt) { return fmt == KLE_W_F32 || fmt == KLE_W_BF16 || fmt == KLE_W_Q8_0; }

long kle_model_planned_bytes(kle_model *m, int fmt) {
  uint64_t n = 0;
  if (!m || !synth_format(fmt) || planned(m, fmt, &n) != KLE_OK) return -1;
  return n > (uint64_t)LONG_MAX ? -1 : (long)n;
}

void kle_synth_q8_0(uint8_t *dst, uint64_t n, uint64_t stream, float offset, float scale) {
  float v[KLE_QK];
  for (uint64_t b = 0; b < n / KLE_QK; b++) {
    for (int j = 0; j < KLE_QK; j++) v[j] = kle_synth_value(stream, b * KLE_QK + (uint64_t)j, offset, scale);
    kle_quantize(KLE_W_Q8_0, v, dst + b * 34, KLE_QK);
  }
}

long kle_model_device_free(kle_model *m) {
  uint64_t free_b = 0, total = 0;
  if (!m || !m->b->mem_info || m->b->mem_info(m->ctx, &free_b, &total) != KLE_OK) return -1;
  return free_b > (uint64_t)LONG_MAX ? LONG_MAX : (long)free_b;
}

struct synth_arg {
  uint64_t seed;
  int fmt;
};

static int make(kle_model *m, void *arg, int role, int layer, int e, int rows, int cols, int anyfmt) {
  const struct synth_arg *a = arg;
  const int fmt = anyfmt ? a->fmt : KLE_W_F32;
  const uint64_t stream = kle_synth_stream(a->seed, kle_synth_key(role, layer, e));
  const uint64_t n = kle_mul64((uint64_t)rows, (uint64_t)cols);
  float offset, scale;
  init_of(m, role, cols, &offset, &scale);
  if (anyfmt && kle_row_bytes(fmt, cols) < 0) return KLE_EINVAL;
  if (anyfmt && !kle_derive_reads(role)) {
    kle_tensor *t = kle_tensor_slot(m, role, layer, e);
    const uint64_t bytes = kle_mul64((uint64_t)rows, (uint64_t)kle_row_bytes(fmt, cols));
    void *d = bytes > KLE_MAX_ALLOC ? NULL : m->b->alloc_weight ? m->b->alloc_weight(m->ctx, (size_t)bytes) : m->b->alloc(m->ctx, (size_t)bytes);
    if (!d) return KLE_ENOMEM;
    *t = (kle_tensor){.fmt = fmt, .rows = rows, .cols = cols, .bytes = (long)bytes, .data = (uint8_t *)d, .placed = 1, .synth = stream};
    return m->b->synth(m->ctx, d, fmt, n, stream, offset, scale);
  }
  uint8_t *p = (uint8_t *)kle_model_tensor(m, role, layer, e, fmt, rows, cols);
  if (!p) return KLE_ENOMEM;
  if (role == KLE_T_KDA_A_LOG) { /* decay rates exp(A_log) spread over 1..16 */
    for (uint64_t i = 0; i < n; i++) ((float *)p)[i] = logf(1.0f + 15.0f * (0.5f + 0.5f * kle_synth_value(stream, i, 0.0f, 1.0f)));
    return KLE_OK;
  }
  if (fmt == KLE_W_F32)
    for (uint64_t i = 0; i < n; i++) ((float *)p)[i] = kle_synth_value(stream, i, offset, scale);
  else if (fmt == KLE_W_Q8_0) /* rows are whole blocks: the row-major blocks are the rows' */
    kle_synth_q8_0(p, n, stream, offset, scale);
  else
    for (uint64_t i = 0; i < n; i++) ((uint16_t *)p)[i] = kle_synth_bf16(kle_synth_value(stream, i, offset, scale));
  return KLE_OK;
}

/* device memory held back from the weights: sessions need some, and the driver a little */
#define SYNTH_RESERVE ((uint64_t)1 << 30)

int kle_model_synthesize(kle_model *m, int seed, int fmt) {
  if (!m || m->finalized || !synth_format(fmt)) return KLE_EINVAL;
  /* a model that does not fit is refused before anything is allocated */
  uint64_t free_b = 0, total = 0, need = 0;
  KLE_TRY(planned(m, fmt, &need));
  if (m->b->mem_info) {
    KLE_TRY(m->b->mem_info(m->ctx, &free_b, &total));
    if (kle_add64(need, SYNTH_RESERVE) > free_b) return KLE_ENOMEM;
  }
  struct synth_arg a = {(uint64_t)(uint32_t)seed, fmt};
  KLE_TRY(each_tensor(m, &a, make));
  return m->b->sync(m->ctx);
}

/* the same values for a session's state: caches' rows near unit size, small KDA states */
int kle_session_synthesize(kle_session *s, int len, int seed) {
  if (!s || len < 0 || s->pos != 0 || s->budget) return KLE_EINVAL;
  const kle_model *m = s->m;
  KLE_TRY(kle_session_reserve(s, len > 0 ? len : 1));
  for (int l = 0; l < m->cfg[KLE_CFG_LAYERS]; l++) {
    const kle_layer_kind *k = kle_mixer_of(m, l);
    const uint64_t stream = kle_synth_stream((uint64_t)(uint32_t)seed, kle_synth_key(KLE_T_COUNT, l, 0));
    for (int i = 0; i < k->n_state; i++)
      KLE_TRY(m->b->synth(m->ctx, s->state[(size_t)l * KLE_MAX_STATE + i], KLE_W_F32, k->state_floats(m, i),
                          stream + 0x100000000ull * (uint64_t)(i + 1), 0.0f, i + 1 < k->n_state ? 0.5f : 0.02f));
    const uint64_t row = k->cache_row_floats(m);
    if (row && len > 0) KLE_TRY(m->b->synth(m->ctx, s->cache[l], s->kv_fmt, kle_mul64(row, (uint64_t)len), stream, 0.0f, 1.0f));
  }
  s->pos = s->len = len;
  s->has_logits = 0;
  return m->b->sync(m->ctx);
}
