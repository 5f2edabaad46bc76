/* moe.c: top-k expert routing with optional grouping and selection bias (DeepSeek-V3 style;
 * docs/model.md, section 4). */
#include <math.h>
#include <stdlib.h>

#include "../include/kle.h"

/* index of the largest v[i] with eligible[i], lowest index on ties; -1 if none */
static int argmax_eligible(const float *v, const unsigned char *eligible, int n) {
  int best = -1;
  for (int i = 0; i < n; i++)
    if (eligible[i] && (best < 0 || v[i] > v[best])) best = i;
  return best;
}

int kle_moe_route(const float *logits, const float *bias, int E, int topk, int n_group,
                  int topk_group, int act, int renorm, float scale, int32_t *idx, float *w) {
  if (E <= 0 || topk <= 0 || n_group <= 0 || E % n_group || topk_group <= 0 ||
      topk_group > n_group || (act != KLE_ROUTE_SOFTMAX && act != KLE_ROUTE_SIGMOID))
    return KLE_EINVAL;
  int per = E / n_group;
  if (topk > topk_group * per) return KLE_EINVAL;
  float *buf = malloc(sizeof(float) * (2 * (size_t)E + n_group));
  unsigned char *elig = malloc((size_t)E + 2 * (size_t)n_group);
  if (!buf || !elig) {
    free(buf);
    free(elig);
    return KLE_ENOMEM;
  }
  float *s = buf, *choice = buf + E, *gscore = buf + 2 * E;
  if (act == KLE_ROUTE_SOFTMAX) {
    float m = -INFINITY, sum = 0.0f;
    for (int e = 0; e < E; e++) m = logits[e] > m ? logits[e] : m;
    for (int e = 0; e < E; e++) sum += s[e] = expf(logits[e] - m);
    for (int e = 0; e < E; e++) s[e] /= sum;
  } else {
    for (int e = 0; e < E; e++) s[e] = 1.0f / (1.0f + expf(-logits[e]));
  }
  for (int e = 0; e < E; e++) choice[e] = s[e] + (bias ? bias[e] : 0.0f);
  unsigned char *gel = elig + E, *gsel = elig + E + n_group; /* group unpicked, group chosen */
  for (int gi = 0; gi < n_group; gi++) {
    const float *c = choice + (size_t)gi * per;
    float a = -INFINITY, b = -INFINITY; /* top two of the group */
    for (int i = 0; i < per; i++) {
      if (c[i] > a) {
        b = a;
        a = c[i];
      } else if (c[i] > b) {
        b = c[i];
      }
    }
    gscore[gi] = per > 1 ? a + b : a; /* with or without a bias: a missing one is zero */
    gel[gi] = 1;
  }
  for (int gi = 0; gi < n_group; gi++) gsel[gi] = 0;
  for (int r = 0; r < topk_group; r++) {
    int gbest = argmax_eligible(gscore, gel, n_group);
    gel[gbest] = 0;
    gsel[gbest] = 1;
  }
  for (int e = 0; e < E; e++) elig[e] = gsel[e / per];
  float total = 0.0f;
  for (int r = 0; r < topk; r++) {
    int e = argmax_eligible(choice, elig, E);
    elig[e] = 0;
    idx[r] = e;
    w[r] = s[e];
    total += s[e];
  }
  for (int r = 0; r < topk; r++) w[r] = (renorm ? w[r] / (total + 1e-20f) : w[r]) * scale;
  free(buf);
  free(elig);
  return KLE_OK;
}
