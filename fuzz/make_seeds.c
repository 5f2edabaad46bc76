/* make_seeds.c: writes the session_blob target's seed corpus: blobs of the tiny model at 0, 1, 5
 * and 70 tokens (the prefill path), and of sessions with a bounded MLA cache (version 2 blobs:
 * below the budget, and past it with rows dropped and pinned), into the folder given. */
#include <stdio.h>

#include "tiny_model.h"

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  kle_model *m = tiny_model();
  /* tokens, budget (0: none), pinned tokens at the start */
  const int cases[][3] = {{0, 0, 0}, {1, 0, 0}, {5, 0, 0}, {70, 0, 0}, {5, 8, 0}, {40, 8, 0}, {40, 12, 3}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const int len = cases[i][0], budget = cases[i][1], pinned = cases[i][2];
    kle_session *s = kle_session_create(m);
    if (budget && kle_session_set_kv_budget(s, budget, 1, 2, 0.9f, pinned ? KLE_KV_RECENT : KLE_KV_ATTENTION) != KLE_OK) return 1;
    int32_t toks[70];
    for (int t = 0; t < len; t++) toks[t] = (t * 7 + 3) % TINY_VOCAB;
    if (pinned && (kle_session_pin(s, 1) || kle_session_forward(s, toks, pinned, NULL, 0) || kle_session_pin(s, 0))) return 1;
    if (len > pinned && kle_session_forward(s, toks + pinned, len - pinned, NULL, 0) != KLE_OK) return 1;
    const long n = kle_session_state_size(s);
    uint8_t *buf = malloc((size_t)n);
    if (kle_session_state_save(s, buf, n) != KLE_OK) return 1;
    char path[4096];
    snprintf(path, sizeof path, "%s/blob-%d-tokens%s", argv[1], len, budget ? (pinned ? "-budget-pinned" : "-budget") : "");
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(buf, 1, (size_t)n, f) != (size_t)n || fclose(f)) return 1;
    free(buf);
    kle_session_free(s);
  }
  kle_model_free(m);
  return 0;
}
