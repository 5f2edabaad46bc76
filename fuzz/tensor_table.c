/*
 * Fuzz target: the model's config check and tensor table (kle_model_create,
 * kle_model_tensor_expect, kle_model_tensor, kle_model_finalize), then sessions on what passed,
 * with config numbers, roles, layers, experts, formats, shapes, weight bytes and token ids all
 * from the input. Sizes are kept to a small model's envelope (a few MB) so that every run checks
 * logic, not the allocator; the 32-bit wrap of large sizes has its own tests on wasm.
 */
#include "tiny_model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
  const uint8_t *p;
  size_t n;
} reader;

static unsigned r8(reader *r) {
  if (!r->n) return 0;
  r->n--;
  return *r->p++;
}
static unsigned r16(reader *r) { return r8(r) | r8(r) << 8; }
/* a value in [-6, cap + 6): out of range on both sides now and then */
static int32_t field(reader *r, int cap) { return (int32_t)(r16(r) % (unsigned)(cap + 12)) - 6; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  reader r = {data, size};
  const int L = 1 + (int)(r8(&r) % 4);
  int32_t cfg[KLE_CFG_N_INTS + 4];
  static const int caps[KLE_CFG_N_INTS] = {
      [KLE_CFG_VOCAB] = 300, [KLE_CFG_HIDDEN] = 128, [KLE_CFG_LAYERS] = 4, [KLE_CFG_INTER] = 128,
      [KLE_CFG_KDA_HEADS] = 8, [KLE_CFG_KDA_HEAD_DIM] = 64, [KLE_CFG_CONV] = 18, [KLE_CFG_KDA_GATE_PER_HEAD] = 2,
      [KLE_CFG_MLA_HEADS] = 8, [KLE_CFG_QK_NOPE] = 32, [KLE_CFG_QK_ROPE] = 32, [KLE_CFG_V_HEAD] = 32, [KLE_CFG_KV_RANK] = 64,
      [KLE_CFG_EXPERTS] = 16, [KLE_CFG_EXPERTS_PER_TOK] = 8, [KLE_CFG_SHARED_EXPERTS] = 3, [KLE_CFG_MOE_INTER] = 64,
      [KLE_CFG_FIRST_DENSE] = 5, [KLE_CFG_MOE_FREQ] = 3, [KLE_CFG_N_GROUP] = 8, [KLE_CFG_TOPK_GROUP] = 8,
      [KLE_CFG_ROUTER_ACT] = 2, [KLE_CFG_RENORM] = 2, [KLE_CFG_TIED] = 2};
  for (int i = 0; i < KLE_CFG_N_INTS; i++) cfg[i] = field(&r, caps[i]);
  cfg[KLE_CFG_LAYERS] = r8(&r) % 8 ? L : field(&r, 4);
  for (int l = 0; l < 4; l++) cfg[KLE_CFG_N_INTS + l] = (int32_t)(r8(&r) % 3) - (r8(&r) % 16 == 0); /* 2, -1: no such kind */
  float cfgf[KLE_CFGF_N] = {(float)field(&r, 20) * 1e-6f, (float)field(&r, 8) * 0.5f, -(float)field(&r, 8)};
  const int n_cfg = KLE_CFG_N_INTS + L + (r8(&r) % 16 == 0);
  kle_model *m = kle_model_create(cfg, n_cfg, cfgf, KLE_CFGF_N);
  if (!m) return 0;
  /* first, now and then, every tensor the config expects, so finalize is reached often */
  const int fill_all = r8(&r) & 1;
  for (int layer = -1; fill_all && layer < L; layer++)
    for (int role = 0; role < KLE_T_COUNT; role++)
      for (int e = 0; e < 16; e++) {
        int32_t ex[3];
        if (kle_model_tensor_expect(m, role, layer, e, ex) == KLE_TENSOR_UNUSED) continue;
        const int fmt = ex[2] ? (int)(r8(&r) % 5) : KLE_W_F32;
        const long rb = kle_row_bytes(fmt, ex[1]);
        uint8_t *w = (uint8_t *)kle_model_tensor(m, role, layer, e, rb < 0 ? KLE_W_F32 : fmt, ex[0], ex[1]);
        if (!w) continue;
        const long bytes = (rb < 0 ? 4L * ex[1] : rb) * ex[0];
        for (long i = 0; i < bytes; i++) w[i] = (uint8_t)(i * 37 + (long)r8(&r));
        /* no NaN or huge values in f32 weights: the forward pass must run, not overflow */
        if (fmt == KLE_W_F32 || rb < 0)
          for (long i = 0; i < bytes / 4; i++) ((float *)w)[i] = (float)((int8_t)w[4 * i]) / 256.0f;
      }
  /* then hostile placements: any role, layer, expert, format and shape */
  for (int k = 0, count = (int)(r8(&r) % 24); k < count; k++) {
    const int role = (int)(r8(&r) % (KLE_T_COUNT + 2)) - 1, layer = (int)(r8(&r) % (L + 3)) - 2;
    const int expert = (int)(r8(&r) % 20) - 2, fmt = (int)(r8(&r) % 7) - 1;
    int32_t ex[3] = {0, 0, 0};
    (void)kle_model_tensor_expect(m, role, layer, expert, ex);
    const int exact = r8(&r) & 1, rows = exact ? ex[0] : field(&r, 300), cols = exact ? ex[1] : field(&r, 300);
    uint8_t *w = (uint8_t *)kle_model_tensor(m, role, layer, expert, fmt, rows, cols);
    if (!w) continue;
    const long bytes = kle_row_bytes(fmt, cols) * rows; /* the engine took the shape: this is its size */
    memset(w, 0, (size_t)bytes);
  }
  if (kle_model_finalize(m) == KLE_OK) {
    kle_session *s = kle_session_create(m);
    if (s) {
      int32_t toks[80];
      const int n = (int)(r8(&r) % 80) + 1;
      for (int i = 0; i < n; i++) toks[i] = (int32_t)(r16(&r) % 340) - 20; /* some outside the vocabulary */
      (void)kle_session_forward(s, toks, n, NULL, 0);
      (void)kle_session_forward(s, toks, 1, NULL, 0);
      const long bytes = kle_session_state_size(s);
      uint8_t *blob = bytes > 0 ? malloc((size_t)bytes) : NULL;
      if (blob && kle_session_state_save(s, blob, bytes) == KLE_OK && kle_session_state_load(s, blob, bytes) != KLE_OK) abort();
      free(blob);
      kle_session_free(s);
    }
  }
  kle_model_free(m);
  return 0;
}
