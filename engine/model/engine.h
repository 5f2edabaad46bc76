/* engine.h: the model, its layer kinds and the session, shared by the engine's sources (not public). */
#ifndef KLE_ENGINE_H
#define KLE_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "../include/kle.h"
#include "backend.h"

struct kle_tensor {
  int fmt, rows, cols;
  long bytes;
  uint8_t *data; /* host memory until placed, then the backend's; NULL until the host gives it */
  int placed;
  /* a synthetic tensor made in the backend's memory (synth.c): its stream, which stands for its
   * bytes in the model's fingerprint (the host cannot read them); 0 otherwise */
  uint64_t synth;
  /* the bytes the fingerprint reads, kept when the tensor moved to the backend before finalize
   * (kle_model_tensor_ready) */
  uint8_t sample[64];
  int sampled;
};

/* Roles that exist once per expert (per layer) rather than once per layer. */
#define KLE_IS_EXPERT_ROLE(r) ((r) == KLE_T_EXP_GATE || (r) == KLE_T_EXP_UP || (r) == KLE_T_EXP_DOWN)
/* Most fixed-size state sections and derived weights one layer kind has. */
#define KLE_MAX_STATE 4
/* a batched step's table (backend.h, rows_table): per layer, per row, its state sections then
 * its cache */
#define KLE_ROW_SLOTS (KLE_MAX_STATE + 1)
#define KLE_MAX_DERIVED 3

/*
 * A layer kind: one row of data and one forward function. The token mixers (KDA, MLA) and the
 * feed-forward blocks (dense SwiGLU, MoE) are rows of two tables (layers.c); the model, the
 * session, the state blob and the shape checks only read the rows.
 */
typedef struct {
  const char *name;
  /* the shape of a per-layer role it uses: KLE_TENSOR_* with rows, cols and any-format flag */
  int (*expect)(const kle_model *m, int role, int *rows, int *cols, int *anyfmt);
  /* fixed-size state sections per session, in blob order */
  int n_state;
  uint64_t (*state_floats)(const kle_model *m, int section);
  /* floats per token of its growing cache (0: none) */
  uint64_t (*cache_row_floats)(const kle_model *m);
  /* at finalize: weights derived from the host's tensors before they are placed, and what the
   * backend needs once they are (NULL: none) */
  int (*derive)(kle_model *m, int layer);
  int (*prepare)(kle_model *m, int layer);
  int (*forward)(kle_session *s, int layer, const float *h, float *y, int T);
} kle_layer_kind;

/* kle_model->layer_kind[l] indexes the mixers (KLE_LAYER_*) */
extern const kle_layer_kind kle_mixers[2];
extern const kle_layer_kind kle_ffn_dense, kle_ffn_moe;

struct kle_model {
  int32_t cfg[KLE_CFG_N_INTS];
  float cfgf[KLE_CFGF_N];
  int32_t *layer_kind;  /* [layers] */
  kle_tensor *t;        /* [layers + 1][KLE_T_COUNT]: row 0 holds the global tensors */
  kle_tensor *experts;  /* [layers][experts][3] */
  kle_tensor *derived;  /* [layers][KLE_MAX_DERIVED] */
  void **expert_tabs;   /* [layers]: the backend's handle on a MoE layer's experts */
  const kle_backend *b;
  kle_backend_ctx *ctx;
  /* the activations of a forward batch, shared by the model's sessions (one forward runs at a
   * time per model), made with the first session; a batched step's logits [rows, vocab] */
  void *arena;
  float *batch_logits;
  int batch_logits_rows;
  kle_session *sessions; /* the live sessions, linked: a batched step checks its handles here */
  long bytes;           /* weights in backend memory */
  uint64_t fingerprint;
  int finalized;
};

/* kle_session.rowinfo: the row's token position, and this bit when it is pinned */
#define KLE_ROW_PINNED 0x80000000u
#define KLE_ROW_POS(r) ((r) & ~KLE_ROW_PINNED)

struct kle_session {
  kle_model *m;
  kle_session *next, *prev; /* the model's list of sessions */
  int pos, cap, has_logits;
  /* the host copy of the logits is behind logits_dev (non-host backends download on demand) */
  int logits_stale;
  /* rows each growing cache holds: pos, unless a budget dropped some (kv_budget.c) */
  int len;
  /* the bounded MLA cache: budget 0 is none; dropped: 1 once any row was dropped */
  int budget, sink, window, pinning, dropped, policy;
  float decay;
  uint32_t **rowinfo;  /* [layers]: per cached row its position | KLE_ROW_PINNED, backend memory, with a budget */
  float **score;       /* [layers]: per cached row its score, backend memory, with a budget */
  float **state;       /* [layers][KLE_MAX_STATE] fixed-size sections */
  void **cache;        /* [layers]: cap rows of the mixer's cache, or NULL; values as kv_fmt */
  int kv_fmt;          /* KLE_W_F32, or KLE_W_BF16 where the backend keeps MLA caches so */
  void *graph;         /* the backend's captured decode step (graph_step), or NULL */
  int dyn;             /* 1 while a step is launched for capture: lengths and tokens are the device's */
  kle_session *const *rows; /* during a batched step (on its first session): the session of each row */
  /* and, where the backend takes a step's rows at once (rows_table): layer l's pointers at
   * rowtab + l * n * KLE_ROW_SLOTS, each row's cached length in rowlens, their largest + 1 */
  void *const *rowtab;
  const int32_t *rowlens;
  int rowmax;
  float *logits;       /* [vocab], host memory */
  float *logits_dev;   /* [vocab], backend memory (logits itself where that is the host's) */
  float *logits_all;   /* [batch, vocab], backend memory, made on first use (non-host backends) */
  float *x, *h, *y, /* the activations: carved from the model's shared arena */ *a[11], *small, *route_w, *moe_scratch;
  int32_t *route_idx;
};

/* bytes of one value of the session's caches */
static inline size_t kle_kv_elem(const kle_session *s) { return s->kv_fmt == KLE_W_BF16 ? 2 : 4; }
/* row `row` of layer l's cache, rows of Dc values */
static inline void *kle_kv_row(const kle_session *s, int l, uint64_t row, uint64_t Dc) {
  return (char *)s->cache[l] + row * Dc * kle_kv_elem(s);
}

/* model.c */
const kle_layer_kind *kle_mixer_of(const kle_model *m, int layer);
const kle_layer_kind *kle_ffn_of(const kle_model *m, int layer);
const kle_tensor *kle_tensor_at(const kle_model *m, int role, int layer);
kle_tensor *kle_tensor_slot(const kle_model *m, int role, int layer, int expert);
/* model.c: 1 for the roles a layer kind's derive reads in host memory at finalize (kv_b, conv taps) */
int kle_derive_reads(int role);
/* model.c: KLE_TENSOR_* of (role, layer, expert), with its shape and any-format flag */
int kle_model_expect(const kle_model *m, int role, int layer, int expert, int *rows, int *cols, int *anyfmt);
const kle_tensor *kle_derived_at(const kle_model *m, int layer, int i);
kle_tensor *kle_derived_slot(kle_model *m, int layer, int i);
/* A host f32 copy of a tensor the host wrote (dequantized if stored quantized); NULL if out of memory. */
float *kle_tensor_to_f32(const kle_tensor *t);
/* session.c: drops the captured decode step (the memory it addressed moved) */
void kle_session_drop_graph(kle_session *s);
/* session.c: grows every cache to hold at least `need` rows */
int kle_session_reserve(kle_session *s, int need);
/* kv_budget.c: brings every MLA cache back within the budget after a batch */
int kle_kv_evict(kle_session *s);
/* kv_budget.c: pinned rows of the session's caches (the same in every MLA layer) */
int kle_kv_pinned(const kle_session *s);
/* kv_budget.c: releases the rows' positions and scores */
void kle_kv_free(kle_session *s);
/* kv_budget.c: 1 when budget, sink, window and decay make a bound kle_session_set_kv_budget takes */
int kle_kv_settings_ok(int budget, int sink, int window, float decay, int policy);
/* kv_budget.c: 1 when the MLA kernels keep row scores for this session */
int kle_kv_scored(const kle_session *s);
/* forward.c */
int kle_forward(kle_session *s, const int32_t *tokens, int n, float *logits, int all);
/* session.c: the last logits in host memory, downloaded if the host copy is stale */
int kle_session_host_logits(kle_session *s);

/*
 * Sizes from a file's or a client's numbers (a config, a tensor's shape, a blob's position)
 * are computed in 64 bits, saturating so that an overflow cannot wrap into a small size, and
 * refused past what this target can allocate: wasm's size_t is 32 bits. Every allocation
 * sized by such numbers goes through kle_host_alloc_n or kle_backend_alloc_n.
 */
#define KLE_MAX_ALLOC ((uint64_t)(SIZE_MAX / 2))
static inline uint64_t kle_mul64(uint64_t a, uint64_t b) { return a && b > UINT64_MAX / a ? UINT64_MAX : a * b; }
static inline uint64_t kle_add64(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }
/* count * size bytes of host memory (uninitialized), or NULL when more than this target allows */
void *kle_host_alloc_n(uint64_t count, uint64_t size);
/* count * size bytes of the backend's memory (zeroed), or NULL likewise */
void *kle_backend_alloc_n(const kle_model *m, uint64_t count, uint64_t size);

#define KLE_TRY(x)                                                                                 \
  do {                                                                                             \
    int rc_ = (x);                                                                                 \
    if (rc_ != KLE_OK) return rc_;                                                                 \
  } while (0)

#endif
