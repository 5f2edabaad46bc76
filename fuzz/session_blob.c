/*
 * Fuzz target: kle_session_state_load on hostile bytes (a blob from a client or another node).
 * A blob the engine takes must then decode a token and save again without touching memory
 * outside its allocations. Built with FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION, which skips the
 * blob's checksum so that mutations reach the checks behind it.
 */
#include "tiny_model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static kle_model *m;
  if (!m && !(m = tiny_model())) abort();
  kle_session *s = kle_session_create(m);
  if (!s) abort();
  if (kle_session_state_load(s, data, (long)size) == KLE_OK) {
    const int32_t t = (int32_t)(size % TINY_VOCAB);
    float logits[TINY_VOCAB];
    if (kle_session_forward(s, &t, 1, logits, 0) != KLE_OK) abort();
    const long n = kle_session_state_size(s);
    uint8_t *buf = malloc((size_t)n);
    if (!buf || kle_session_state_save(s, buf, n) != KLE_OK) abort();
    free(buf);
  }
  kle_session_free(s);
  return 0;
}
