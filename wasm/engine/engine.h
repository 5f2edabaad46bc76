/* engine.h: the model and session structures shared by the engine's sources (not public). */
#ifndef KLE_ENGINE_H
#define KLE_ENGINE_H

#include <stdint.h>

#include "../include/kle.h"

typedef struct {
  int fmt, rows, cols;
  long bytes;
  uint8_t *data; /* NULL until the host places it */
} kle_tensor;

/* Roles that exist once per expert (per layer) rather than once per layer. */
#define KLE_IS_EXPERT_ROLE(r) ((r) == KLE_T_EXP_GATE || (r) == KLE_T_EXP_UP || (r) == KLE_T_EXP_DOWN)

struct kle_model {
  int32_t cfg[KLE_CFG_N_INTS];
  float cfgf[KLE_CFGF_N];
  int32_t *layer_kind; /* [layers] */
  kle_tensor *t;       /* [layers + 1][KLE_T_COUNT]: row 0 holds the global tensors */
  kle_tensor *experts; /* [layers][experts][3] */
  /* derived at finalize: conv weights as [kernel, channels]; MLA kv_b split per head (f32) */
  float **conv_t;      /* [layers][3] */
  float **w_uk, **w_uv; /* [layers]: [H, nope, R] and [H, v, R] */
  uint64_t fingerprint;
  int finalized;
};

struct kle_session {
  kle_model *m;
  int pos;
  float **kda_state; /* [layers]: [H, K, V] or NULL */
  float **conv_tail; /* [layers][3]: [W-1, C] */
  float **mla_cache; /* [layers]: [cap, R + rope] */
  int mla_cap;
  float *logits; /* [vocab] */
  int has_logits;
  /* activations for KLE_PREFILL_BATCH tokens */
  float *x, *h, *y, *a0, *a1, *a2, *a3, *a4, *a5, *a6, *small;
  int32_t *route_idx;
  float *route_w;
  int32_t *tok_list;
};

/* helpers from model.c used by the forward pass */
const kle_tensor *kle_tensor_at(const kle_model *m, int role, int layer);
int kle_layer_is_moe(const kle_model *m, int layer);
int kle_forward(kle_session *s, const int32_t *tokens, int n, float *logits, int all);

#endif
