/*
 * kv_budget.c: the bounded MLA cache (docs/kv-budget.md). Only the MLA layers grow with the
 * context; with a budget each of them keeps at most `budget` rows between forward calls.
 *
 * Which rows stay: the first `sink` tokens (attention sinks), the last `window` tokens, every
 * pinned token (a prompt kept whole), and, for the rest of the budget, the rows whose score is
 * highest (KLE_KV_RECENT: the newest, every score staying 0 so that age decides; KLE_KV_LEARNED:
 * a score the model's importance head gives each token once, DynTS's idea). A row's score is the attention the queries paid to it, averaged over heads, decayed
 * by `decay` per query (the MLA attention kernel keeps it: kle_mla_decode_scored), so it weighs
 * recent queries most. Each layer chooses for itself: its heads look at different tokens.
 *
 * Dropping rows moves no more than the batch: MLA here has no rotary (mla_use_nope), so a
 * row's slot does not matter to attention; the rows kept among the batch's new ones, past the
 * budget, fill the slots of the rows dropped below it. rowinfo records each slot's token.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

typedef struct {
  float score;
  uint32_t pos;
  int row;
  int guarded; /* sink, window or pinned: dropped only if nothing else is left */
} kv_row;

/* drop order: unguarded before guarded, then lowest score, then oldest */
static int kv_before(const kv_row *a, const kv_row *b) {
  if (a->guarded != b->guarded) return a->guarded < b->guarded;
  if (a->score != b->score) return a->score < b->score;
  return a->pos < b->pos;
}

static int kv_cmp(const void *pa, const void *pb) {
  const kv_row *a = pa, *b = pb;
  return kv_before(a, b) ? -1 : kv_before(b, a) ? 1 : 0;
}

static int is_mla(const kle_model *m, int l) { return kle_mixer_of(m, l)->cache_row_floats(m) != 0; }

int kle_kv_pinned(const kle_session *s) {
  const kle_model *m = s->m;
  for (int l = 0; l < m->cfg[KLE_CFG_LAYERS]; l++) {
    if (!is_mla(m, l) || !s->rowinfo || !s->rowinfo[l]) continue;
    uint32_t *info = kle_host_alloc_n((uint64_t)(s->len > 0 ? s->len : 1), sizeof(uint32_t));
    if (!info || m->b->download(m->ctx, info, s->rowinfo[l], sizeof(uint32_t) * (size_t)s->len) != KLE_OK) {
      free(info);
      return INT32_MAX; /* unknown: no room to pin more */
    }
    int n = 0;
    for (int j = 0; j < s->len; j++) n += (info[j] & KLE_ROW_PINNED) != 0;
    free(info);
    return n;
  }
  return 0;
}

/* one layer: choose len - budget rows to drop, move kept rows from past the budget into their slots */
static int evict_layer(kle_session *s, int l, kv_row *rows, float *score_host, uint32_t *info) {
  const kle_model *m = s->m;
  const kle_backend *b = m->b;
  const int M = s->len, N = s->budget, k = M - N;
  const size_t Dc = (size_t)kle_mixer_of(m, l)->cache_row_floats(m);
  float *score = s->score[l];
  const int64_t recent = (int64_t)s->pos - s->window;
  /* a decode step's one row, chosen where the rows are (no round trip to the host on a GPU) */
  if (k == 1 && b->kv_drop_one)
    return b->kv_drop_one(m->ctx, s->cache[l], (int)Dc, s->kv_fmt, score, s->rowinfo[l], M, (uint32_t)s->sink, recent);
  KLE_TRY(b->download(m->ctx, score_host, score, sizeof(float) * (size_t)M));
  KLE_TRY(b->download(m->ctx, info, s->rowinfo[l], sizeof(uint32_t) * (size_t)M));
  for (int j = 0; j < M; j++) {
    const uint32_t p = KLE_ROW_POS(info[j]);
    rows[j] = (kv_row){score_host[j], p, j, (int64_t)p < s->sink || (int64_t)p >= recent || (info[j] & KLE_ROW_PINNED)};
  }
  /* a decode step drops one row: a scan; a batch sorts its candidates */
  if (k == 1) {
    int best = 0;
    for (int j = 1; j < M; j++)
      if (kv_before(&rows[j], &rows[best])) best = j;
    const kv_row t = rows[0];
    rows[0] = rows[best];
    rows[best] = t;
  } else {
    qsort(rows, (size_t)M, sizeof *rows, kv_cmp);
  }
  /* rows[0..k) are dropped: mark them, then pair holes below N with survivors at N and past */
  char *drop = calloc((size_t)M, 1);
  if (!drop) return KLE_ENOMEM;
  for (int i = 0; i < k; i++) drop[rows[i].row] = 1;
  int hole = 0, rc = KLE_OK;
  for (int src = N; src < M && rc == KLE_OK; src++) {
    if (drop[src]) continue;
    while (!drop[hole]) hole++; /* as many holes below N as survivors at N and past */
    rc = b->copy(m->ctx, kle_kv_row(s, l, (uint64_t)hole, Dc), kle_kv_row(s, l, (uint64_t)src, Dc), kle_kv_elem(s) * Dc);
    if (rc == KLE_OK) rc = b->copy(m->ctx, score + hole, score + src, sizeof(float));
    if (rc == KLE_OK) rc = b->copy(m->ctx, s->rowinfo[l] + hole, s->rowinfo[l] + src, sizeof(uint32_t));
    hole++;
  }
  free(drop);
  return rc;
}

int kle_kv_evict(kle_session *s) {
  const kle_model *m = s->m;
  if (!s->budget || s->len <= s->budget) return KLE_OK;
  kv_row *rows = kle_host_alloc_n((uint64_t)s->len, sizeof(kv_row));
  float *score_host = kle_host_alloc_n((uint64_t)s->len, sizeof(float));
  uint32_t *info = kle_host_alloc_n((uint64_t)s->len, sizeof(uint32_t));
  int rc = rows && score_host && info ? KLE_OK : KLE_ENOMEM;
  for (int l = 0; rc == KLE_OK && l < m->cfg[KLE_CFG_LAYERS]; l++)
    if (is_mla(m, l)) rc = evict_layer(s, l, rows, score_host, info);
  free(rows);
  free(score_host);
  free(info);
  if (rc == KLE_OK) {
    s->len = s->budget;
    s->dropped = 1;
  }
  return rc;
}

/* the layer's scores to 0 (the recent-only policy keeps them there: moves copy zeros) */
static int zero_scores(kle_session *s, int l) {
  const kle_model *m = s->m;
  const size_t n = (size_t)(s->cap > 0 ? s->cap : 1);
  float *z = calloc(n, sizeof(float));
  if (!z) return KLE_ENOMEM;
  const int rc = m->b->upload(m->ctx, s->score[l], z, sizeof(float) * n);
  free(z);
  return rc;
}

/* rowinfo and scores for every MLA layer, sized to the caches' capacity; rows so far are tokens 0.. */
static int kv_alloc(kle_session *s) {
  const kle_model *m = s->m;
  const int L = m->cfg[KLE_CFG_LAYERS];
  if (!s->rowinfo && !(s->rowinfo = calloc((size_t)L, sizeof *s->rowinfo))) return KLE_ENOMEM;
  if (!s->score && !(s->score = calloc((size_t)L, sizeof *s->score))) return KLE_ENOMEM;
  const uint64_t cap = (uint64_t)(s->cap > 0 ? s->cap : 1);
  for (int l = 0; l < L; l++) {
    if (!is_mla(m, l) || s->rowinfo[l]) continue;
    if (!(s->rowinfo[l] = kle_backend_alloc_n(m, cap, sizeof(uint32_t)))) return KLE_ENOMEM;
    if (!(s->score[l] = kle_backend_alloc_n(m, cap, sizeof(float)))) return KLE_ENOMEM;
    if (s->len) KLE_TRY(m->b->kv_note_rows(m->ctx, s->rowinfo[l], s->len, 0, 0));
  }
  return KLE_OK;
}

void kle_kv_free(kle_session *s) {
  const kle_model *m = s->m;
  for (int l = 0; l < m->cfg[KLE_CFG_LAYERS]; l++) {
    if (s->rowinfo) m->b->release(m->ctx, s->rowinfo[l]);
    if (s->score) m->b->release(m->ctx, s->score[l]);
  }
  free(s->rowinfo);
  free(s->score);
  s->rowinfo = NULL;
  s->score = NULL;
}

int kle_kv_settings_ok(int budget, int sink, int window, float decay, int policy) {
  return budget > 0 && sink >= 0 && window >= 0 && (int64_t)sink + window < budget && budget <= (1 << 30) &&
         decay >= 0.0f && decay <= 1.0f && policy >= KLE_KV_ATTENTION && policy <= KLE_KV_LEARNED;
}

int kle_kv_scored(const kle_session *s) { return s->budget && s->policy == KLE_KV_ATTENTION; }

int kle_session_set_kv_budget(kle_session *s, int budget, int sink, int window, float decay, int policy) {
  if (!s) return KLE_EINVAL;
  if (budget == 0) {
    if (s->dropped) return KLE_EINVAL; /* rows are no longer positions: the bound stays */
    kle_kv_free(s);
    s->budget = 0;
    return KLE_OK;
  }
  if (!kle_kv_settings_ok(budget, sink, window, decay, policy) || s->len > budget) return KLE_EINVAL;
  if (policy == KLE_KV_LEARNED && !s->m->cfg[KLE_CFG_KV_IMPORTANCE]) return KLE_EINVAL; /* no head to learn from */
  KLE_TRY(kv_alloc(s));
  /* scores kept so far mean nothing to another policy: start them over */
  if (policy != s->policy || !s->budget)
    for (int l = 0; l < s->m->cfg[KLE_CFG_LAYERS]; l++)
      if (s->score && s->score[l]) KLE_TRY(zero_scores(s, l));
  s->policy = policy;
  s->budget = budget;
  s->sink = sink;
  s->window = window;
  s->decay = decay;
  return KLE_OK;
}

int kle_session_kv_settings(kle_session *s, int32_t *out, float *decay) {
  if (!s || !out || !decay) return KLE_EINVAL;
  out[0] = s->budget;
  out[1] = s->sink;
  out[2] = s->window;
  out[3] = s->policy;
  *decay = s->decay;
  return KLE_OK;
}

int kle_session_pin(kle_session *s, int on) {
  if (!s || (on != 0 && on != 1)) return KLE_EINVAL;
  s->pinning = on;
  return KLE_OK;
}

int kle_session_kv_len(kle_session *s) { return s ? s->len : 0; }
