// Harness (ours) around llama.cpp's public C API: loads a GGUF, runs the token ids given on the
// command line, and writes every position's logits as little-endian float32 to OUT.
//   llama-logits MODEL.gguf OUT.f32 [--one-by-one] TOKEN...
// --one-by-one decodes a token per llama_decode call (its recurrent/decode path); otherwise the
// tokens go in one batch (its prefill path). Built outside this repository against a fetched
// llama.cpp (see test/fixtures/README.md); nothing of llama.cpp is committed.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "llama.h"

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s MODEL.gguf OUT.f32 [--one-by-one] TOKEN...\n", argv[0]);
    return 2;
  }
  const char *path = argv[1], *out = argv[2];
  int first = 3;
  bool one = false;
  if (!strcmp(argv[3], "--one-by-one")) {
    one = true;
    first = 4;
  }
  std::vector<llama_token> toks;
  for (int i = first; i < argc; i++) toks.push_back((llama_token)atoi(argv[i]));
  llama_backend_init();
  llama_model_params mp = llama_model_default_params();
  llama_model *model = llama_model_load_from_file(path, mp);
  if (!model) {
    fprintf(stderr, "failed to load %s\n", path);
    return 1;
  }
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = 4096;
  cp.n_batch = 4096;
  cp.n_ubatch = 4096;
  cp.n_threads = 1;
  cp.n_threads_batch = 1;
  llama_context *ctx = llama_init_from_model(model, cp);
  if (!ctx) {
    fprintf(stderr, "failed to create a context\n");
    return 1;
  }
  const int nv = llama_vocab_n_tokens(llama_model_get_vocab(model));
  FILE *f = fopen(out, "wb");
  const int n = (int)toks.size();
  const int step = one ? 1 : n;
  llama_batch b = llama_batch_init(n, 0, 1);
  for (int s = 0; s < n; s += step) {
    b.n_tokens = 0;
    for (int i = s; i < s + step && i < n; i++) {
      b.token[b.n_tokens] = toks[i];
      b.pos[b.n_tokens] = i;
      b.n_seq_id[b.n_tokens] = 1;
      b.seq_id[b.n_tokens][0] = 0;
      b.logits[b.n_tokens] = 1;
      b.n_tokens++;
    }
    if (llama_decode(ctx, b)) {
      fprintf(stderr, "llama_decode failed at %d\n", s);
      return 1;
    }
    for (int i = 0; i < b.n_tokens; i++) fwrite(llama_get_logits_ith(ctx, i), sizeof(float), nv, f);
  }
  fclose(f);
  llama_batch_free(b);
  llama_free(ctx);
  llama_model_free(model);
  fprintf(stderr, "wrote %d x %d logits\n", n, nv);
  return 0;
}
