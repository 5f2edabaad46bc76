/*
 * tiny_model.h: a small Kimi Linear model (every layer kind: KDA, MLA, dense and MoE blocks) with
 * seeded weights, built through the engine's own tensor table, for the fuzz targets and the
 * program that makes their seed corpus. The same bytes every time, so saved blobs keep loading.
 */
#ifndef KLE_FUZZ_TINY_MODEL_H
#define KLE_FUZZ_TINY_MODEL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kle.h"

#define TINY_VOCAB 64

static uint32_t tiny_rng(uint32_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 17;
  *s ^= *s << 5;
  return *s;
}

static kle_model *tiny_model(void) {
  /* layer kinds KDA, KDA, MLA, KDA; MoE from layer 1 (4 experts, top 2, one shared) */
  int32_t cfg[KLE_CFG_N_INTS + 4] = {0};
  cfg[KLE_CFG_VOCAB] = TINY_VOCAB, cfg[KLE_CFG_HIDDEN] = 16, cfg[KLE_CFG_LAYERS] = 4, cfg[KLE_CFG_INTER] = 32;
  cfg[KLE_CFG_KDA_HEADS] = 2, cfg[KLE_CFG_KDA_HEAD_DIM] = 8, cfg[KLE_CFG_CONV] = 4;
  cfg[KLE_CFG_MLA_HEADS] = 2, cfg[KLE_CFG_QK_NOPE] = 8, cfg[KLE_CFG_QK_ROPE] = 4, cfg[KLE_CFG_V_HEAD] = 8, cfg[KLE_CFG_KV_RANK] = 8;
  cfg[KLE_CFG_EXPERTS] = 4, cfg[KLE_CFG_EXPERTS_PER_TOK] = 2, cfg[KLE_CFG_SHARED_EXPERTS] = 1, cfg[KLE_CFG_MOE_INTER] = 8;
  cfg[KLE_CFG_FIRST_DENSE] = 1, cfg[KLE_CFG_MOE_FREQ] = 1, cfg[KLE_CFG_N_GROUP] = 2, cfg[KLE_CFG_TOPK_GROUP] = 1;
  cfg[KLE_CFG_ROUTER_ACT] = KLE_ROUTE_SIGMOID, cfg[KLE_CFG_RENORM] = 1;
  const int32_t kinds[4] = {KLE_LAYER_KDA, KLE_LAYER_KDA, KLE_LAYER_MLA, KLE_LAYER_KDA};
  memcpy(cfg + KLE_CFG_N_INTS, kinds, sizeof kinds);
  const float cfgf[KLE_CFGF_N] = {1e-5f, 2.5f, 0.0f};
  kle_model *m = kle_model_create(cfg, KLE_CFG_N_INTS + 4, cfgf, KLE_CFGF_N);
  if (!m) return NULL;
  uint32_t seed = 20261130u;
  for (int layer = -1; layer < 4; layer++)
    for (int role = 0; role < KLE_T_COUNT; role++)
      for (int e = 0; e < 4; e++) {
        int32_t ex[3];
        if (kle_model_tensor_expect(m, role, layer, e, ex) == KLE_TENSOR_UNUSED) continue;
        const int rows = ex[0], cols = ex[1];
        float *w = (float *)kle_model_tensor(m, role, layer, e, KLE_W_F32, rows, cols);
        if (!w) abort();
        for (long i = 0; i < (long)rows * cols; i++) w[i] = ((float)(tiny_rng(&seed) % 2001) - 1000.0f) / 4000.0f;
      }
  if (kle_model_finalize(m) != KLE_OK) abort();
  return m;
}

#endif
