/*
 * forward.c: the Kimi Linear forward pass over a batch of tokens, written once for every backend:
 * embedding; per layer RMSNorm -> token mixer -> residual, RMSNorm -> feed-forward -> residual
 * (each a layer kind of layers.c); final RMSNorm; LM head. One token takes the decode kernels
 * (KDA step, MLA decode over the latent cache); a batch takes the prefill kernels (chunked KDA,
 * causal MLA prefill), which give the same result to float32 rounding.
 */
#include <stdlib.h>
#include <string.h>

#include "engine.h"

static int lm_head(kle_session *s, const float *x, float *logits, int T) {
  const kle_model *m = s->m;
  const kle_tensor *head = kle_tensor_at(m, KLE_T_LM_HEAD, -1);
  if (!head->data) head = kle_tensor_at(m, KLE_T_TOK_EMBD, -1);
  KLE_TRY(m->b->rmsnorm(m->ctx, x, NULL, (const float *)kle_tensor_at(m, KLE_T_OUT_NORM, -1)->data, s->h, T,
                        m->cfg[KLE_CFG_HIDDEN], m->cfgf[KLE_CFGF_RMS_EPS]));
  return m->b->matmul(m->ctx, head, s->h, logits, T);
}

/* every token's logits of a batch into host memory at out */
static int all_logits(kle_session *s, float *out, int T) {
  const kle_model *m = s->m;
  const size_t V = (size_t)m->cfg[KLE_CFG_VOCAB];
  if (m->b->host_memory) return lm_head(s, s->x, out, T);
  if (!s->logits_all && !(s->logits_all = kle_backend_alloc_n(m, kle_mul64(V, (uint64_t)m->b->batch), sizeof(float))))
    return KLE_ENOMEM;
  KLE_TRY(lm_head(s, s->x, s->logits_all, T));
  return m->b->download(m->ctx, out, s->logits_all, sizeof(float) * V * (size_t)T);
}

/* embedding, every layer, for T tokens at s->x (tokens NULL: the one graph_step wrote) */
static int layers(kle_session *s, const int32_t *tokens, int T) {
  const kle_model *m = s->m;
  const kle_backend *b = m->b;
  kle_backend_ctx *cx = m->ctx;
  const int D = m->cfg[KLE_CFG_HIDDEN], L = m->cfg[KLE_CFG_LAYERS];
  const float eps = m->cfgf[KLE_CFGF_RMS_EPS];
  KLE_TRY(b->embed(cx, kle_tensor_at(m, KLE_T_TOK_EMBD, -1), tokens, s->x, T));
  int normed = 0; /* s->h already holds the next block's normalized input */
  for (int l = 0; l < L; l++) {
    const kle_layer_kind *blocks[2] = {kle_mixer_of(m, l), kle_ffn_of(m, l)};
    const float *norms[2] = {(const float *)kle_tensor_at(m, KLE_T_ATTN_NORM, l)->data,
                             (const float *)kle_tensor_at(m, KLE_T_FFN_NORM, l)->data};
    for (int i = 0; i < 2; i++) {
      if (!normed) KLE_TRY(b->rmsnorm(cx, s->x, NULL, norms[i], s->h, T, D, eps));
      KLE_TRY(blocks[i]->forward(s, l, s->h, s->y, T));
      /* the residual add with the norm of the block after it, where the backend has both in one */
      const float *next = i == 0 ? norms[1] : l + 1 < L ? (const float *)kle_tensor_at(m, KLE_T_ATTN_NORM, l + 1)->data : NULL;
      normed = next && b->add_rmsnorm;
      if (normed)
        KLE_TRY(b->add_rmsnorm(cx, s->x, s->y, next, s->h, T, D, eps));
      else
        KLE_TRY(b->add(cx, s->x, s->y, (size_t)T * D));
    }
  }
  return KLE_OK;
}

/* a decode step as the backend captures it: the token and the length are read on the device */
static int decode_body(void *arg) {
  kle_session *s = arg;
  KLE_TRY(layers(s, NULL, 1));
  return lm_head(s, s->x, s->logits_dev, 1);
}

/* one token through a captured graph (replayed, or captured now); KLE_ENOSYS when it cannot be */
static int decode_graph(kle_session *s, int32_t token) {
  const kle_model *m = s->m;
  s->dyn = 1;
  const int rc = m->b->graph_step(m->ctx, &s->graph, token, s->len, decode_body, s);
  s->dyn = 0;
  KLE_TRY(rc);
  s->pos += 1;
  s->len += 1;
  return KLE_OK;
}

/* after the last batch: wait for the device, then the last logits where asked */
static int finish(kle_session *s, float *logits, int all) {
  const kle_model *m = s->m;
  KLE_TRY(m->b->sync(m->ctx));
  s->has_logits = 1;
  /* a GPU's logits stay where they are until someone reads them: sampling there needs none */
  s->logits_stale = !m->b->host_memory;
  if (logits && !all) {
    KLE_TRY(kle_session_host_logits(s));
    memcpy(logits, s->logits, sizeof(float) * (size_t)m->cfg[KLE_CFG_VOCAB]);
  }
  return KLE_OK;
}

int kle_forward(kle_session *s, const int32_t *tokens, int n, float *logits, int all) {
  const kle_model *m = s->m;
  const kle_backend *b = m->b;
  const int D = m->cfg[KLE_CFG_HIDDEN], V = m->cfg[KLE_CFG_VOCAB];
  if (n <= 0 || !tokens || n > (1 << 30) - s->pos) return KLE_EINVAL;
  for (int i = 0; i < n; i++)
    if (tokens[i] < 0 || tokens[i] >= V) return KLE_EINVAL;
  /* with a budget a batch's rows join at most budget cached ones: the caches stay bounded */
  if (s->budget && s->pinning && (int64_t)kle_kv_pinned(s) + n + s->sink + s->window > s->budget) return KLE_EINVAL;
  /* (rows are dropped after each batch: the budget and one batch at most) */
  const int64_t need = (int64_t)s->len + n, bounded = (int64_t)s->budget + b->batch;
  KLE_TRY(kle_session_reserve(s, (int)(s->budget && need > bounded ? bounded : need)));
  /* one token without a budget (whose drops the host decides) and without every logit: a graph */
  if (n == 1 && b->graph_step && !s->budget && !(logits && all) && s->len + 1 <= s->cap) {
    const int rc = decode_graph(s, tokens[0]);
    if (rc == KLE_OK) return finish(s, logits, all);
    if (rc != KLE_ENOSYS) return rc;
  }
  for (int off = 0; off < n; off += b->batch) {
    const int T = n - off < b->batch ? n - off : b->batch;
    if (s->len + T > s->cap) return KLE_EINVAL; /* never write past the caches, whatever the bookkeeping */
    KLE_TRY(layers(s, tokens + off, T));
    s->pos += T;
    s->len += T;
    if (logits && all) KLE_TRY(all_logits(s, logits + (size_t)off * V, T));
    if (off + T == n) KLE_TRY(lm_head(s, s->x + (size_t)(T - 1) * D, s->logits_dev, 1));
    /* after the logits are launched: on a GPU the scores' download waits for the layers, and
     * the LM head then runs meanwhile instead of after */
    if (s->budget) KLE_TRY(kle_kv_evict(s));
  }
  return finish(s, logits, all);
}


/*
 * The table a backend with rows_table reads a batched step's rows from: per layer, per row, the
 * row's session's state sections then its cache (KLE_ROW_SLOTS pointers), then every row's cached
 * length. Only when the rows' caches share one format (their kernels are chosen per launch).
 */
static int stage_rows(kle_session *lead, kle_session *const *ss, int n) {
  const kle_model *m = lead->m;
  const int L = m->cfg[KLE_CFG_LAYERS];
  for (int i = 1; i < n; i++)
    if (ss[i]->kv_fmt != ss[0]->kv_fmt) return KLE_OK;
  const uint64_t nptr = kle_mul64(kle_mul64((uint64_t)L, (uint64_t)n), KLE_ROW_SLOTS);
  const uint64_t bytes = kle_add64(kle_mul64(nptr, sizeof(void *)), kle_mul64((uint64_t)n, sizeof(int32_t)));
  void **tab = kle_host_alloc_n(bytes, 1);
  if (!tab) return KLE_ENOMEM;
  int32_t *lens = (int32_t *)(tab + nptr);
  int maxlen = 0;
  for (int l = 0; l < L; l++) {
    const kle_layer_kind *k = kle_mixer_of(m, l);
    for (int r = 0; r < n; r++) {
      void **row = tab + ((size_t)l * n + r) * KLE_ROW_SLOTS;
      for (int i = 0; i < KLE_ROW_SLOTS; i++) row[i] = NULL;
      for (int i = 0; i < k->n_state; i++) row[i] = ss[r]->state[(size_t)l * KLE_MAX_STATE + i];
      if (k->n_state < KLE_ROW_SLOTS) row[k->n_state] = ss[r]->cache[l];
    }
  }
  for (int r = 0; r < n; r++) {
    lens[r] = ss[r]->len;
    if (ss[r]->len + 1 > maxlen) maxlen = ss[r]->len + 1;
  }
  void *dev = NULL;
  const int rc = m->b->rows_table(m->ctx, tab, (size_t)bytes, &dev);
  free(tab);
  KLE_TRY(rc);
  lead->rowtab = dev;
  lead->rowlens = (const int32_t *)((void *const *)dev + nptr);
  lead->rowmax = maxlen;
  return KLE_OK;
}

/* the live session of m at a handle from the caller, or NULL */
static kle_session *session_at(const kle_model *m, uint64_t h) {
  for (kle_session *s = m->sessions; s; s = s->next)
    if ((uint64_t)(uintptr_t)s == h) return s;
  return NULL;
}

int kle_model_step_batch(kle_model *m, const uint8_t *handles, const int32_t *tokens, int n) {
  if (!m || m->finalized != 1 || !handles || !tokens || n <= 0 || n > m->b->batch) return KLE_EINVAL;
  const kle_backend *b = m->b;
  const int V = m->cfg[KLE_CFG_VOCAB];
  kle_session **ss = kle_host_alloc_n((uint64_t)n, sizeof *ss);
  if (!ss) return KLE_ENOMEM;
  int rc = KLE_OK;
  /* every handle one of this model's live sessions, each once, without a budget (whose drops
   * the host decides per session) and with room for a token */
  for (int i = 0; i < n && rc == KLE_OK; i++) {
    uint64_t h = 0;
    for (int k = 0; k < 8; k++) h |= (uint64_t)handles[8 * i + k] << (8 * k);
    ss[i] = session_at(m, h);
    if (!ss[i] || ss[i]->budget || tokens[i] < 0 || tokens[i] >= V || ss[i]->pos >= (1 << 30) - 1) rc = KLE_EINVAL;
    for (int j = 0; j < i && rc == KLE_OK; j++)
      if (ss[j] == ss[i]) rc = KLE_EINVAL;
  }
  for (int i = 0; i < n && rc == KLE_OK; i++) rc = kle_session_reserve(ss[i], ss[i]->len + 1);
  if (rc == KLE_OK && n == 1) rc = kle_forward(ss[0], tokens, 1, NULL, 0);
  else if (rc == KLE_OK) {
    kle_session *lead = ss[0];
    if (m->batch_logits_rows < n) {
      b->release(m->ctx, m->batch_logits);
      m->batch_logits_rows = 0;
      m->batch_logits = kle_backend_alloc_n(m, kle_mul64((uint64_t)V, (uint64_t)n), sizeof(float));
      if (m->batch_logits) m->batch_logits_rows = n;
      else rc = KLE_ENOMEM;
    }
    /* the rows' activations in the shared arena (lead's pointers), each mixer row its session's */
    lead->rows = ss;
    if (rc == KLE_OK && b->rows_table) rc = stage_rows(lead, ss, n);
    if (rc == KLE_OK) rc = layers(lead, tokens, n);
    lead->rows = NULL;
    lead->rowtab = NULL;
    lead->rowlens = NULL;
    if (rc == KLE_OK) rc = lm_head(lead, lead->x, m->batch_logits, n);
    if (rc == KLE_OK && b->copy_n) {
      void **dst = kle_host_alloc_n((uint64_t)n, sizeof *dst);
      if (!dst) rc = KLE_ENOMEM;
      for (int i = 0; i < n && dst; i++) dst[i] = ss[i]->logits_dev;
      if (dst) rc = b->copy_n(m->ctx, n, dst, m->batch_logits, sizeof(float) * (size_t)V);
      free(dst);
    } else
      for (int i = 0; i < n && rc == KLE_OK; i++)
        rc = b->copy(m->ctx, ss[i]->logits_dev, m->batch_logits + (size_t)i * V, sizeof(float) * (size_t)V);
    /* the state moved on whether or not the last copies failed: count the token */
    for (int i = 0; i < n; i++) {
      ss[i]->pos += 1;
      ss[i]->len += 1;
    }
    if (rc == KLE_OK) rc = b->sync(m->ctx);
    for (int i = 0; i < n && rc == KLE_OK; i++) {
      ss[i]->has_logits = 1;
      ss[i]->logits_stale = !b->host_memory;
    }
  }
  free(ss);
  return rc;
}

int kle_model_batch(kle_model *m) { return m ? m->b->batch : KLE_EINVAL; }
