/*
 * session.c: per-conversation state (KDA recurrent states and conv tails, MLA latent caches,
 * position, last logits) and its versioned blob, which moves a conversation between hosts.
 *
 * Blob v1, little-endian: "KLES" | u32 version | u64 model fingerprint | u32 layers | u32 pos |
 * u32 has_logits | u32 vocab | per layer (KDA: 3 conv tails [W-1, C] then S [H, K, V]; MLA:
 * pos rows of the latent cache) as f32 | logits [vocab] if has_logits | u64 FNV-1a of all before.
 */
#include <stdlib.h>
#include <string.h>

#include "engine.h"

#define BLOB_VERSION 1u
#define BLOB_HEADER 32

static size_t per_token_width(const kle_model *m) {
  const int32_t *c = m->cfg;
  const size_t HK = (size_t)c[KLE_CFG_KDA_HEADS] * c[KLE_CFG_KDA_HEAD_DIM];
  const size_t Hm = (size_t)c[KLE_CFG_MLA_HEADS], Dc = (size_t)c[KLE_CFG_KV_RANK] + c[KLE_CFG_QK_ROPE];
  const size_t cand[] = {HK, Hm * ((size_t)c[KLE_CFG_QK_NOPE] + c[KLE_CFG_QK_ROPE]), Hm * Dc,
                         Hm * (size_t)c[KLE_CFG_V_HEAD], Dc, (size_t)c[KLE_CFG_EXPERTS], (size_t)c[KLE_CFG_INTER],
                         (size_t)c[KLE_CFG_MOE_INTER] * (c[KLE_CFG_SHARED_EXPERTS] > 1 ? c[KLE_CFG_SHARED_EXPERTS] : 1),
                         (size_t)c[KLE_CFG_HIDDEN]};
  size_t w = 0;
  for (size_t i = 0; i < sizeof cand / sizeof cand[0]; i++) w = cand[i] > w ? cand[i] : w;
  return w;
}

static size_t kda_tail_floats(const kle_model *m) {
  return (size_t)(m->cfg[KLE_CFG_CONV] - 1) * m->cfg[KLE_CFG_KDA_HEADS] * m->cfg[KLE_CFG_KDA_HEAD_DIM];
}

static size_t kda_state_floats(const kle_model *m) {
  const size_t dk = (size_t)m->cfg[KLE_CFG_KDA_HEAD_DIM];
  return (size_t)m->cfg[KLE_CFG_KDA_HEADS] * dk * dk;
}

static size_t mla_row_floats(const kle_model *m) {
  return (size_t)m->cfg[KLE_CFG_KV_RANK] + m->cfg[KLE_CFG_QK_ROPE];
}

void kle_session_free(kle_session *s) {
  if (!s) return;
  const int L = s->m->cfg[KLE_CFG_LAYERS];
  for (int l = 0; l < L; l++) {
    if (s->kda_state) free(s->kda_state[l]);
    if (s->mla_cache) free(s->mla_cache[l]);
    for (int i = 0; i < 3 && s->conv_tail; i++) free(s->conv_tail[l * 3 + i]);
  }
  free(s->kda_state);
  free(s->mla_cache);
  free(s->conv_tail);
  float *bufs[] = {s->logits, s->x, s->h, s->y, s->a0, s->a1, s->a2, s->a3, s->a4, s->a5, s->a6, s->small, s->route_w};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
  free(s->route_idx);
  free(s->tok_list);
  free(s);
}

kle_session *kle_session_create(kle_model *m) {
  if (!m || !m->finalized) return NULL;
  kle_session *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->m = m;
  const int L = m->cfg[KLE_CFG_LAYERS], D = m->cfg[KLE_CFG_HIDDEN];
  const size_t TB = KLE_PREFILL_BATCH, W = per_token_width(m);
  const size_t K = m->cfg[KLE_CFG_EXPERTS_PER_TOK] > 0 ? (size_t)m->cfg[KLE_CFG_EXPERTS_PER_TOK] : 1;
  int ok = (s->kda_state = calloc(L, sizeof(float *))) && (s->mla_cache = calloc(L, sizeof(float *))) &&
           (s->conv_tail = calloc((size_t)L * 3, sizeof(float *))) &&
           (s->logits = calloc(m->cfg[KLE_CFG_VOCAB], sizeof(float))) &&
           (s->x = malloc(sizeof(float) * TB * D)) && (s->h = malloc(sizeof(float) * TB * D)) &&
           (s->y = malloc(sizeof(float) * TB * D)) && (s->a0 = malloc(sizeof(float) * TB * W)) &&
           (s->a1 = malloc(sizeof(float) * TB * W)) && (s->a2 = malloc(sizeof(float) * TB * W)) &&
           (s->a3 = malloc(sizeof(float) * TB * W)) && (s->a4 = malloc(sizeof(float) * TB * W)) &&
           (s->a5 = malloc(sizeof(float) * TB * W)) && (s->a6 = malloc(sizeof(float) * TB * W)) &&
           (s->small = malloc(sizeof(float) * TB * (m->cfg[KLE_CFG_KDA_HEAD_DIM] + 1))) &&
           (s->route_idx = malloc(sizeof(int32_t) * TB * K)) && (s->route_w = malloc(sizeof(float) * TB * K)) &&
           (s->tok_list = malloc(sizeof(int32_t) * TB * K));
  for (int l = 0; ok && l < L; l++) {
    if (m->layer_kind[l] != KLE_LAYER_KDA) continue;
    ok = (s->kda_state[l] = calloc(kda_state_floats(m), sizeof(float))) != NULL;
    for (int i = 0; ok && i < 3; i++)
      ok = (s->conv_tail[l * 3 + i] = calloc(kda_tail_floats(m) + 1, sizeof(float))) != NULL;
  }
  if (!ok) {
    kle_session_free(s);
    return NULL;
  }
  return s;
}

int kle_session_forward(kle_session *s, const int32_t *tokens, int n, float *logits, int all) {
  if (!s) return KLE_EINVAL;
  return kle_forward(s, tokens, n, logits, all);
}

kle_addr kle_session_logits(kle_session *s) { return s && s->has_logits ? (kle_addr)s->logits : 0; }
int kle_session_pos(kle_session *s) { return s ? s->pos : 0; }

static size_t body_floats(const kle_model *m, int pos, int has_logits) {
  size_t n = 0;
  for (int l = 0; l < m->cfg[KLE_CFG_LAYERS]; l++)
    n += m->layer_kind[l] == KLE_LAYER_KDA ? 3 * kda_tail_floats(m) + kda_state_floats(m)
                                           : (size_t)pos * mla_row_floats(m);
  return n + (has_logits ? (size_t)m->cfg[KLE_CFG_VOCAB] : 0);
}

long kle_session_state_size(kle_session *s) {
  if (!s) return 0;
  return (long)(BLOB_HEADER + 4 * body_floats(s->m, s->pos, s->has_logits) + 8);
}

static void put_u32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_u32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static void put_u64(uint8_t *p, uint64_t v) {
  put_u32(p, (uint32_t)v);
  put_u32(p + 4, (uint32_t)(v >> 32));
}
static uint64_t get_u64(const uint8_t *p) { return get_u32(p) | (uint64_t)get_u32(p + 4) << 32; }

static uint64_t fnv(const uint8_t *p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

int kle_session_state_save(kle_session *s, uint8_t *dst, long n) {
  if (!s || !dst || n != kle_session_state_size(s)) return KLE_EINVAL;
  const kle_model *m = s->m;
  memcpy(dst, "KLES", 4);
  put_u32(dst + 4, BLOB_VERSION);
  put_u64(dst + 8, m->fingerprint);
  put_u32(dst + 16, (uint32_t)m->cfg[KLE_CFG_LAYERS]);
  put_u32(dst + 20, (uint32_t)s->pos);
  put_u32(dst + 24, (uint32_t)s->has_logits);
  put_u32(dst + 28, (uint32_t)m->cfg[KLE_CFG_VOCAB]);
  uint8_t *p = dst + BLOB_HEADER;
  for (int l = 0; l < m->cfg[KLE_CFG_LAYERS]; l++) {
    if (m->layer_kind[l] == KLE_LAYER_KDA) {
      for (int i = 0; i < 3; i++) {
        memcpy(p, s->conv_tail[l * 3 + i], 4 * kda_tail_floats(m));
        p += 4 * kda_tail_floats(m);
      }
      memcpy(p, s->kda_state[l], 4 * kda_state_floats(m));
      p += 4 * kda_state_floats(m);
    } else {
      size_t bytes = 4 * (size_t)s->pos * mla_row_floats(m);
      if (bytes) memcpy(p, s->mla_cache[l], bytes);
      p += bytes;
    }
  }
  if (s->has_logits) {
    memcpy(p, s->logits, 4 * (size_t)m->cfg[KLE_CFG_VOCAB]);
    p += 4 * (size_t)m->cfg[KLE_CFG_VOCAB];
  }
  put_u64(p, fnv(dst, (size_t)(p - dst)));
  return KLE_OK;
}

int kle_session_state_load(kle_session *s, const uint8_t *src, long n) {
  if (!s || !src || n < BLOB_HEADER + 8) return KLE_EFORMAT;
  const kle_model *m = s->m;
  if (memcmp(src, "KLES", 4) || get_u32(src + 4) != BLOB_VERSION || get_u64(src + 8) != m->fingerprint ||
      get_u32(src + 16) != (uint32_t)m->cfg[KLE_CFG_LAYERS] || get_u32(src + 24) > 1 ||
      get_u32(src + 28) != (uint32_t)m->cfg[KLE_CFG_VOCAB])
    return KLE_EFORMAT;
  uint32_t pos = get_u32(src + 20);
  int has_logits = (int)get_u32(src + 24);
  if (pos > (1u << 30)) return KLE_EFORMAT;
  size_t want = BLOB_HEADER + 4 * body_floats(m, (int)pos, has_logits) + 8;
  if ((size_t)n != want || get_u64(src + want - 8) != fnv(src, want - 8)) return KLE_EFORMAT;
  /* everything is checked: only now touch the session */
  int rc = KLE_OK;
  const int saved_cap = s->mla_cap;
  (void)saved_cap;
  if ((int)pos > s->mla_cap) {
    int cap = 64;
    while (cap < (int)pos) cap *= 2;
    for (int l = 0; l < m->cfg[KLE_CFG_LAYERS]; l++) {
      if (m->layer_kind[l] != KLE_LAYER_MLA) continue;
      float *p = realloc(s->mla_cache[l], sizeof(float) * mla_row_floats(m) * (size_t)cap);
      if (!p) return KLE_ENOMEM; /* grown caches still hold the old rows: nothing is lost */
      s->mla_cache[l] = p;
    }
    s->mla_cap = cap;
  }
  const uint8_t *p = src + BLOB_HEADER;
  for (int l = 0; l < m->cfg[KLE_CFG_LAYERS]; l++) {
    if (m->layer_kind[l] == KLE_LAYER_KDA) {
      for (int i = 0; i < 3; i++) {
        memcpy(s->conv_tail[l * 3 + i], p, 4 * kda_tail_floats(m));
        p += 4 * kda_tail_floats(m);
      }
      memcpy(s->kda_state[l], p, 4 * kda_state_floats(m));
      p += 4 * kda_state_floats(m);
    } else {
      size_t bytes = 4 * (size_t)pos * mla_row_floats(m);
      if (bytes) memcpy(s->mla_cache[l], p, bytes);
      p += bytes;
    }
  }
  if (has_logits) memcpy(s->logits, p, 4 * (size_t)m->cfg[KLE_CFG_VOCAB]);
  s->has_logits = has_logits;
  s->pos = (int)pos;
  return rc;
}

int kle_session_state_save_at(kle_session *s, kle_addr dst, long n) {
  return kle_session_state_save(s, (uint8_t *)dst, n);
}

int kle_session_state_load_at(kle_session *s, kle_addr src, long n) {
  return kle_session_state_load(s, (const uint8_t *)src, n);
}
