/*
 * session.c: per-conversation state (each layer kind's fixed-size sections, such as KDA's
 * recurrent state and conv tails, and its growing cache, MLA's latent rows), position, last
 * logits, and the versioned blob that moves a conversation between hosts and backends. The
 * state lives in the backend's memory; the blob is written and read through its copies.
 *
 * Blob, little-endian: "KLES" | u32 version | u64 model fingerprint | u32 layers | u32 pos |
 * u32 has_logits | u32 vocab | (version 2, a session with a bounded MLA cache, kv_budget.c:
 * u32 budget | u32 sink | u32 window | f32 decay | u32 flags (2 rows dropped, 4 the recent-only
 * policy, 8 the learned one; pinning is the host's mode around a prefill call, never saved) |
 * u32 rows) | per layer (its fixed sections in order, then its cache's rows: pos of them in
 * version 1, `rows` in version 2, each followed there by the rows' u32 position | 1 << 31 if
 * pinned and their f32 scores; KDA: 3 conv tails [W-1, C] then S [H, K, V]; MLA: the latent
 * rows) as f32 | logits [vocab] if has_logits | u64 FNV-1a of all before. A session without a
 * budget writes version 1, as before budgets existed.
 */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "../kernels/numfmt.h"

#define BLOB_VERSION 1u
#define BLOB_VERSION_BUDGET 2u
#define BLOB_HEADER 32
#define BLOB_HEADER_BUDGET 56
#define BLOB_DROPPED 2u
#define BLOB_RECENT 4u
#define BLOB_LEARNED 8u

/* widest activation row: every buffer a[] holds a batch of rows this wide */
static uint64_t per_token_width(const kle_model *m) {
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

static int n_layers(const kle_model *m) { return m->cfg[KLE_CFG_LAYERS]; }

void kle_session_drop_graph(kle_session *s) {
  if (s->graph && s->m->b->graph_free) s->m->b->graph_free(s->m->ctx, s->graph);
  s->graph = NULL;
}

void kle_session_free(kle_session *s) {
  if (!s) return;
  kle_session_drop_graph(s);
  kle_model *m = s->m;
  for (int l = 0; l < n_layers(m); l++) {
    for (int i = 0; s->state && i < KLE_MAX_STATE; i++) m->b->release(m->ctx, s->state[(size_t)l * KLE_MAX_STATE + i]);
    if (s->cache) m->b->release(m->ctx, s->cache[l]);
  }
  kle_kv_free(s);
  if (s->prev) s->prev->next = s->next;
  else if (m->sessions == s) m->sessions = s->next;
  if (s->next) s->next->prev = s->prev;
  m->b->release(m->ctx, s->logits_dev);
  m->b->release(m->ctx, s->logits_all);
  if (!m->b->host_memory) free(s->logits);
  free(s->state);
  free(s->cache);
  free(s);
}

/* the activations, carved from one allocation the model's sessions share (a model runs one
 * forward at a time): a batch of rows of each buffer; the logits are the session's own */
static int make_arena(kle_session *s) {
  kle_model *m = s->m;
  const int32_t *c = m->cfg;
  /* 64-bit counts: a batch of the widest rows passes 4 GiB long before a config's bounds do */
  const uint64_t TB = (uint64_t)m->b->batch, D = (uint64_t)c[KLE_CFG_HIDDEN], W = per_token_width(m);
  const uint64_t K = c[KLE_CFG_EXPERTS_PER_TOK] > 0 ? (uint64_t)c[KLE_CFG_EXPERTS_PER_TOK] : 1;
  const uint64_t MI = c[KLE_CFG_MOE_INTER] > 0 ? (uint64_t)c[KLE_CFG_MOE_INTER] : 1;
  float **bufs[] = {&s->x, &s->h, &s->y, &s->a[0], &s->a[1], &s->a[2], &s->a[3], &s->a[4], &s->a[5], &s->a[6],
                    &s->a[7], &s->a[8], &s->a[9], &s->a[10], &s->small, &s->route_w, (float **)&s->route_idx,
                    &s->moe_scratch};
  const uint64_t sizes[] = {TB * D, TB * D, TB * D, TB * W, TB * W, TB * W, TB * W, TB * W, TB * W, TB * W, TB * W,
                            TB * W, TB * W, TB * W, TB * ((uint64_t)c[KLE_CFG_KDA_HEAD_DIM] + 1), TB * K, TB * K,
                            kle_moe_scratch_floats(TB, K, D, MI)};
  const size_t n = sizeof sizes / sizeof sizes[0];
  uint64_t total = 0;
  for (size_t i = 0; i < n; i++) total = kle_add64(total, (sizes[i] + 63) / 64 * 64); /* 256-byte aligned slices */
  if (!m->arena && !(m->arena = kle_backend_alloc_n(m, total, sizeof(float)))) return KLE_ENOMEM;
  if (!(s->logits_dev = kle_backend_alloc_n(m, (uint64_t)c[KLE_CFG_VOCAB], sizeof(float)))) return KLE_ENOMEM;
  float *p = m->arena;
  for (size_t i = 0; i < n; i++) {
    *bufs[i] = p;
    p += (sizes[i] + 63) / 64 * 64;
  }
  return KLE_OK;
}

kle_session *kle_session_create(kle_model *m) {
  if (!m || m->finalized != 1) return NULL;
  kle_session *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->m = m;
  s->next = m->sessions;
  if (m->sessions) m->sessions->prev = s;
  m->sessions = s;
  const int L = n_layers(m);
  /* a backend that can keeps MLA caches in BF16: half the memory and half the bytes a step reads */
  s->kv_fmt = m->b->kv_bf16_ok && m->b->kv_bf16_ok(m->cfg) ? KLE_W_BF16 : KLE_W_F32;
  int ok = (s->state = calloc((size_t)L * KLE_MAX_STATE, sizeof(float *))) && (s->cache = calloc(L, sizeof(void *))) &&
           make_arena(s) == KLE_OK;
  if (ok) {
    s->logits = m->b->host_memory ? s->logits_dev : calloc(m->cfg[KLE_CFG_VOCAB], sizeof(float));
    ok = s->logits != NULL;
  }
  for (int l = 0; ok && l < L; l++) {
    const kle_layer_kind *k = kle_mixer_of(m, l);
    for (int i = 0; ok && i < k->n_state; i++)
      ok = (s->state[(size_t)l * KLE_MAX_STATE + i] = kle_backend_alloc_n(m, k->state_floats(m, i) + 1, sizeof(float))) != NULL;
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

int kle_session_host_logits(kle_session *s) {
  if (!s->logits_stale) return KLE_OK;
  const kle_model *m = s->m;
  KLE_TRY(m->b->download(m->ctx, s->logits, s->logits_dev, sizeof(float) * (size_t)m->cfg[KLE_CFG_VOCAB]));
  KLE_TRY(m->b->sync(m->ctx));
  s->logits_stale = 0;
  return KLE_OK;
}

kle_addr kle_session_logits(kle_session *s) {
  return s && s->has_logits && kle_session_host_logits(s) == KLE_OK ? (kle_addr)s->logits : 0;
}

int kle_session_has_logits(kle_session *s) { return s && s->has_logits; }

int kle_session_kv_format(kle_session *s) { return s ? s->kv_fmt : KLE_EINVAL; }

int kle_session_set_kv_format(kle_session *s, int fmt) {
  if (!s || s->pos || s->len) return KLE_EINVAL;
  const kle_model *m = s->m;
  if (fmt != KLE_W_F32 && !(fmt == KLE_W_BF16 && m->b->kv_bf16_ok && m->b->kv_bf16_ok(m->cfg))) return KLE_EINVAL;
  if (fmt == s->kv_fmt) return KLE_OK;
  /* empty caches of the old format go; the next forward reserves the new */
  kle_session_drop_graph(s);
  for (int l = 0; l < n_layers(m); l++) {
    m->b->release(m->ctx, s->cache[l]);
    s->cache[l] = NULL;
  }
  s->cap = 0; /* a budget's row arrays are grown again with the caches */
  s->kv_fmt = fmt;
  return KLE_OK;
}

int kle_session_sample(kle_session *s, const float *params, int top_k, const int32_t *toks, const int32_t *counts,
                       const uint8_t *cbias, int n, const int32_t *btoks, const uint8_t *bvals, int nb, int64_t u_bits) {
  if (!s || !params || !s->has_logits) return KLE_EINVAL;
  const kle_model *m = s->m;
  if (!m->b->sample) return KLE_ENOSYS;
  const int V = m->cfg[KLE_CFG_VOCAB];
  const float T = params[0], top_p = params[1], log_min_p = params[2];
  const double rep = params[3], freq = params[4], pres = params[5];
  /* every number from the caller is checked here: the kernel trusts them */
  if (!(T >= 0 && T <= 1e6f) || !(top_p > 0 && top_p <= 1) || !(log_min_p <= 0) || top_k < 0 || !(rep > 0 && rep <= 1e6) ||
      !(freq >= -1e6 && freq <= 1e6) || !(pres >= -1e6 && pres <= 1e6) || u_bits < 0 || u_bits > 0xffffffffLL ||
      n < 0 || nb < 0 || n > V || nb > V || ((n && (!toks || !counts || !cbias)) || (nb && (!btoks || !bvals))))
    return KLE_EINVAL;
  double *bias = kle_host_alloc_n((uint64_t)n + (uint64_t)nb + 1, sizeof(double));
  if (!bias) return KLE_ENOMEM;
  /* the biases arrive as bytes of doubles (the ABI has no f64 arrays), unaligned */
  if (n) memcpy(bias, cbias, sizeof(double) * (size_t)n);
  if (nb) memcpy(bias + n, bvals, sizeof(double) * (size_t)nb);
  int bad = 0;
  for (int i = 0; i < n + nb; i++) bad |= !(bias[i] >= -1e6 && bias[i] <= 1e6);
  for (int i = 0; i < n; i++) bad |= counts[i] < 0;
  const kle_sample_args a = {T, top_p, log_min_p, top_k, rep, freq, pres, (double)u_bits / 4294967296.0,
                             toks, counts, bias, n, btoks, bias + n, nb};
  int32_t token = -1;
  const int rc = bad ? KLE_EINVAL : m->b->sample(m->ctx, s->logits_dev, V, &a, &token);
  free(bias);
  return rc != KLE_OK ? rc : token >= 0 && token < V ? token : KLE_EDEVICE;
}
int kle_session_pos(kle_session *s) { return s ? s->pos : 0; }

/* bytes of a blob with `rows` cached rows per cache, in 64 bits: a forged count must not wrap
 * into a small size */
static uint64_t blob_bytes(const kle_model *m, uint32_t rows, int has_logits, int budgeted) {
  uint64_t n = 0;
  for (int l = 0; l < n_layers(m); l++) {
    const kle_layer_kind *k = kle_mixer_of(m, l);
    for (int i = 0; i < k->n_state; i++) n = kle_add64(n, k->state_floats(m, i));
    const uint64_t row = k->cache_row_floats(m);
    n = kle_add64(n, kle_mul64(rows, row + (budgeted && row ? 2 : 0)));
  }
  n = kle_add64(n, has_logits ? (uint64_t)m->cfg[KLE_CFG_VOCAB] : 0);
  return kle_add64(kle_mul64(n, 4), (budgeted ? BLOB_HEADER_BUDGET : BLOB_HEADER) + 8);
}

long kle_session_state_size(kle_session *s) {
  if (!s) return 0;
  const uint64_t n = blob_bytes(s->m, (uint32_t)s->len, s->has_logits, s->budget != 0);
  return n > (uint64_t)LONG_MAX ? -1 : (long)n; /* wasm's long is 32 bits */
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

/* a copy of n bytes of backend memory in a new allocation of `bytes` (zeroed past n), or NULL */
static void *grown(const kle_model *m, const void *old, size_t n, uint64_t bytes) {
  void *p = kle_backend_alloc_n(m, bytes, 1);
  if (p && n && m->b->copy(m->ctx, p, old, n) != KLE_OK) {
    m->b->release(m->ctx, p);
    return NULL;
  }
  return p;
}

/* grows every cache (and, with a budget, its rows' positions and scores) to hold at least
 * `need` rows, keeping the first len */
int kle_session_reserve(kle_session *s, int need) {
  const kle_model *m = s->m;
  if (need <= s->cap) return KLE_OK;
  int cap = s->cap ? s->cap : 64;
  while (cap < need) cap = cap > (1 << 29) ? need : cap * 2;
  const size_t len = (size_t)s->len;
  for (int l = 0; l < n_layers(m); l++) {
    const size_t row = kle_mixer_of(m, l)->cache_row_floats(m);
    if (!row) continue;
    /* all of a layer's new arrays first: a failure leaves the layer as it was */
    const int scored = s->rowinfo && s->rowinfo[l];
    const size_t elem = kle_kv_elem(s);
    void *p = grown(m, s->cache[l], elem * row * len, kle_mul64(kle_mul64(row, (uint64_t)cap), elem));
    float *sc = scored ? grown(m, s->score[l], sizeof(float) * len, kle_mul64((uint64_t)cap, sizeof(float))) : NULL;
    uint32_t *ri = scored ? grown(m, s->rowinfo[l], sizeof(uint32_t) * len, kle_mul64((uint64_t)cap, sizeof(uint32_t))) : NULL;
    if (!p || (scored && (!sc || !ri))) { /* caches grown so far still hold their rows: nothing is lost */
      m->b->release(m->ctx, p);
      m->b->release(m->ctx, sc);
      m->b->release(m->ctx, ri);
      return KLE_ENOMEM;
    }
    m->b->release(m->ctx, s->cache[l]);
    s->cache[l] = p;
    if (scored) {
      m->b->release(m->ctx, s->rowinfo[l]);
      s->rowinfo[l] = ri;
      m->b->release(m->ctx, s->score[l]);
      s->score[l] = sc;
    }
  }
  s->cap = cap;
  kle_session_drop_graph(s); /* it addressed the old caches */
  return KLE_OK;
}

/* a BF16 cache's n values to or from the blob's f32 (p), through a bounded host buffer */
static int move_bf16(kle_session *s, uint8_t *p, uint16_t *dev, size_t n, int to_host) {
  const kle_model *m = s->m;
  enum { CHUNK = 1 << 20 };
  uint16_t *tmp = malloc(sizeof(uint16_t) * (n < CHUNK ? n : CHUNK));
  if (!tmp) return KLE_ENOMEM;
  int rc = KLE_OK;
  for (size_t off = 0; off < n && rc == KLE_OK; off += CHUNK) {
    const size_t c = n - off < CHUNK ? n - off : CHUNK;
    uint8_t *q = p + 4 * off;
    if (to_host) {
      rc = m->b->download(m->ctx, tmp, dev + off, sizeof(uint16_t) * c);
      for (size_t i = 0; rc == KLE_OK && i < c; i++) {
        const float f = bf16_to_f32(tmp[i]);
        memcpy(q + 4 * i, &f, 4);
      }
    } else {
      for (size_t i = 0; i < c; i++) {
        float f;
        memcpy(&f, q + 4 * i, 4);
        /* finite values stay finite: the largest floats would round up to infinity */
        f = f > 3.3895313e38f ? 3.3895313e38f : f < -3.3895313e38f ? -3.3895313e38f : f;
        tmp[i] = f32_to_bf16(f);
      }
      rc = m->b->upload(m->ctx, dev + off, tmp, sizeof(uint16_t) * c);
    }
  }
  free(tmp);
  return rc;
}

/* copies every section of the blob body between host bytes p and the session (to_host: save);
 * blobs hold f32 whatever the caches' format, so they move between backends */
static int move_body(kle_session *s, uint8_t *p, int rows, int to_host, int budgeted) {
  const kle_model *m = s->m;
  const kle_backend *b = m->b;
  for (int l = 0; l < n_layers(m); l++) {
    const kle_layer_kind *k = kle_mixer_of(m, l);
    for (int i = 0; i <= k->n_state; i++) {
      /* each section is part of a blob whose whole size was checked */
      const size_t n = (size_t)(i < k->n_state ? k->state_floats(m, i) : (uint64_t)rows * k->cache_row_floats(m));
      void *dev = i < k->n_state ? s->state[(size_t)l * KLE_MAX_STATE + i] : s->cache[l];
      if (n && i == k->n_state && s->kv_fmt == KLE_W_BF16)
        KLE_TRY(move_bf16(s, p, dev, n, to_host));
      else if (n)
        KLE_TRY(to_host ? b->download(m->ctx, p, dev, 4 * n) : b->upload(m->ctx, dev, p, 4 * n));
      p += 4 * n;
    }
    if (budgeted && k->cache_row_floats(m)) {
      const size_t bytes = 4 * (size_t)rows;
      if (bytes) KLE_TRY(to_host ? b->download(m->ctx, p, s->rowinfo[l], bytes) : b->upload(m->ctx, s->rowinfo[l], p, bytes));
      p += bytes;
      if (bytes) KLE_TRY(to_host ? b->download(m->ctx, p, s->score[l], bytes) : b->upload(m->ctx, s->score[l], p, bytes));
      p += bytes;
    }
  }
  return KLE_OK;
}

int kle_session_state_save(kle_session *s, uint8_t *dst, long n) {
  if (!s || !dst || n < 0 || n != kle_session_state_size(s)) return KLE_EINVAL;
  const kle_model *m = s->m;
  const int budgeted = s->budget != 0;
  memcpy(dst, "KLES", 4);
  put_u32(dst + 4, budgeted ? BLOB_VERSION_BUDGET : BLOB_VERSION);
  put_u64(dst + 8, m->fingerprint);
  put_u32(dst + 16, (uint32_t)m->cfg[KLE_CFG_LAYERS]);
  put_u32(dst + 20, (uint32_t)s->pos);
  put_u32(dst + 24, (uint32_t)s->has_logits);
  put_u32(dst + 28, (uint32_t)m->cfg[KLE_CFG_VOCAB]);
  if (budgeted) {
    uint32_t decay;
    memcpy(&decay, &s->decay, 4);
    const uint32_t v[6] = {(uint32_t)s->budget, (uint32_t)s->sink, (uint32_t)s->window, decay,
                           (s->dropped ? BLOB_DROPPED : 0u) |
                               (s->policy == KLE_KV_RECENT ? BLOB_RECENT : 0u) |
                               (s->policy == KLE_KV_LEARNED ? BLOB_LEARNED : 0u),
                           (uint32_t)s->len};
    for (int i = 0; i < 6; i++) put_u32(dst + BLOB_HEADER + 4 * i, v[i]);
  }
  if (s->has_logits) KLE_TRY(kle_session_host_logits(s));
  KLE_TRY(move_body(s, dst + (budgeted ? BLOB_HEADER_BUDGET : BLOB_HEADER), s->len, 1, budgeted));
  const size_t end = (size_t)n - 8, vbytes = 4 * (size_t)m->cfg[KLE_CFG_VOCAB];
  if (s->has_logits) memcpy(dst + end - vbytes, s->logits, vbytes);
  put_u64(dst + end, fnv(dst, end));
  return KLE_OK;
}

static int finite_at(const uint8_t *p, size_t n_floats) {
  for (size_t i = 0; i < n_floats; i++) {
    float v;
    memcpy(&v, p + 4 * i, 4);
    if (!isfinite(v)) return 0;
  }
  return 1;
}

/*
 * A checksum proves nothing about where a blob came from: NaN or infinite state would only
 * come out as garbage tokens later, and a row said to hold a token past the position would
 * confuse the budget's choice, so both are refused. Walks the body as move_body lays it out.
 */
static int body_ok(const kle_model *m, const uint8_t *p, uint32_t rows, uint32_t pos, int budgeted, int has_logits) {
  for (int l = 0; l < n_layers(m); l++) {
    const kle_layer_kind *k = kle_mixer_of(m, l);
    uint64_t floats = kle_mul64(rows, k->cache_row_floats(m));
    for (int i = 0; i < k->n_state; i++) floats += k->state_floats(m, i);
    if (!finite_at(p, (size_t)floats)) return 0;
    p += 4 * (size_t)floats;
    if (budgeted && k->cache_row_floats(m)) {
      for (uint32_t j = 0; j < rows; j++)
        if (KLE_ROW_POS(get_u32(p + 4 * (size_t)j)) >= pos) return 0;
      p += 4 * (size_t)rows;
      if (!finite_at(p, rows)) return 0;
      p += 4 * (size_t)rows;
    }
  }
  return !has_logits || finite_at(p, (size_t)m->cfg[KLE_CFG_VOCAB]);
}

int kle_session_state_load(kle_session *s, const uint8_t *src, long n) {
  if (!s || !src || n < BLOB_HEADER + 8) return KLE_EFORMAT;
  const kle_model *m = s->m;
  const uint32_t version = get_u32(src + 4);
  if (memcmp(src, "KLES", 4) || (version != BLOB_VERSION && version != BLOB_VERSION_BUDGET) ||
      get_u64(src + 8) != m->fingerprint || get_u32(src + 16) != (uint32_t)m->cfg[KLE_CFG_LAYERS] ||
      get_u32(src + 24) > 1 || get_u32(src + 28) != (uint32_t)m->cfg[KLE_CFG_VOCAB])
    return KLE_EFORMAT;
  uint32_t pos = get_u32(src + 20);
  int has_logits = (int)get_u32(src + 24);
  if (pos > (1u << 30)) return KLE_EFORMAT;
  const int budgeted = version == BLOB_VERSION_BUDGET;
  uint32_t budget = 0, sink = 0, window = 0, flags = 0, rows = pos;
  float decay = 0.0f;
  if (budgeted) {
    if (n < BLOB_HEADER_BUDGET + 8) return KLE_EFORMAT;
    budget = get_u32(src + 32);
    sink = get_u32(src + 36);
    window = get_u32(src + 40);
    const uint32_t d = get_u32(src + 44);
    memcpy(&decay, &d, 4);
    flags = get_u32(src + 48);
    rows = get_u32(src + 52);
    /* a bound the setter would refuse, more rows than it allows, or rows dropped that never were */
    if (budget > (1u << 30) || sink > budget || window > budget ||
        !kle_kv_settings_ok((int)budget, (int)sink, (int)window, decay, KLE_KV_ATTENTION) ||
        (flags & ~(BLOB_DROPPED | BLOB_RECENT | BLOB_LEARNED)) ||
        (flags & (BLOB_RECENT | BLOB_LEARNED)) == (BLOB_RECENT | BLOB_LEARNED) ||
        ((flags & BLOB_LEARNED) && !m->cfg[KLE_CFG_KV_IMPORTANCE]) ||
        rows > budget || rows > pos || (!(flags & BLOB_DROPPED) && rows != pos))
      return KLE_EFORMAT;
  }
  const uint64_t want = blob_bytes(m, rows, has_logits, budgeted);
  if ((uint64_t)n != want) return KLE_EFORMAT;
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION /* fuzz/: mutations must reach the checks below */
  if (get_u64(src + want - 8) != fnv(src, (size_t)want - 8)) return KLE_EFORMAT;
#endif
  const size_t head = budgeted ? BLOB_HEADER_BUDGET : BLOB_HEADER;
  if (!body_ok(m, src + head, rows, pos, budgeted, has_logits)) return KLE_EFORMAT;
  /* everything is checked: only now touch the session */
  s->pinning = 0;
  if (!budgeted) {
    kle_kv_free(s);
    s->budget = 0;
    s->dropped = 0;
  }
  s->len = s->len < (int)rows ? s->len : (int)rows; /* what reserve keeps: overwritten below */
  KLE_TRY(kle_session_reserve(s, (int)rows));
  if (budgeted) {
    KLE_TRY(kle_session_set_kv_budget(s, (int)budget, (int)sink, (int)window, decay,
                                      (flags & BLOB_RECENT)    ? KLE_KV_RECENT
                                      : (flags & BLOB_LEARNED) ? KLE_KV_LEARNED
                                                               : KLE_KV_ATTENTION));
    s->dropped = (flags & BLOB_DROPPED) != 0;
  }
  KLE_TRY(move_body(s, (uint8_t *)src + head, (int)rows, 0, budgeted));
  const size_t vbytes = 4 * (size_t)m->cfg[KLE_CFG_VOCAB];
  if (has_logits) {
    memcpy(s->logits, src + (size_t)want - 8 - vbytes, vbytes);
    if (!m->b->host_memory) KLE_TRY(m->b->upload(m->ctx, s->logits_dev, s->logits, vbytes));
  }
  s->has_logits = has_logits;
  s->logits_stale = 0;
  s->pos = (int)pos;
  s->len = (int)rows;
  return m->b->sync(m->ctx);
}

int kle_session_state_save_at(kle_session *s, kle_addr dst, long n) {
  return kle_session_state_save(s, (uint8_t *)dst, n);
}

int kle_session_state_load_at(kle_session *s, kle_addr src, long n) {
  return kle_session_state_load(s, (const uint8_t *)src, n);
}
