/* make_seeds.c: writes the session_blob target's seed corpus: blobs of the tiny model at 0, 1, 5
 * and 70 tokens (the prefill path), into the folder given. */
#include <stdio.h>

#include "tiny_model.h"

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  kle_model *m = tiny_model();
  const int lens[] = {0, 1, 5, 70};
  for (int i = 0; i < 4; i++) {
    kle_session *s = kle_session_create(m);
    int32_t toks[70];
    for (int t = 0; t < lens[i]; t++) toks[t] = (t * 7 + 3) % TINY_VOCAB;
    if (lens[i] && kle_session_forward(s, toks, lens[i], NULL, 0) != KLE_OK) return 1;
    const long n = kle_session_state_size(s);
    uint8_t *buf = malloc((size_t)n);
    if (kle_session_state_save(s, buf, n) != KLE_OK) return 1;
    char path[4096];
    snprintf(path, sizeof path, "%s/blob-%d-tokens", argv[1], lens[i]);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(buf, 1, (size_t)n, f) != (size_t)n || fclose(f)) return 1;
    free(buf);
    kle_session_free(s);
  }
  kle_model_free(m);
  return 0;
}
