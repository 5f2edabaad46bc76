// matmul_check.cu: the matmuls of a batched step against float64 products of the same values on
// the host. f32 weights (sgemm.cu through ops.cu's matmul, mla_absorb and mla_up_v): the router's
// shape and odd ones, split along Kd and not, at 9 to 512 tokens, and MLA's per-head products at
// the 48B shapes (32 heads, nope 128, rope 64, latent 512, value head 128). BF16 weights
// (gemm16.cu's matmul16 above 8 tokens, its tensor-core kernels; gemm_x16_kernel from 128
// tokens with BF16-rounded activations): odd shapes and the 48B model's, f32-accurate and with
// the activations rounded to BF16, every output or every 61st column of the LM head's. Then the
// time of each at Kimi-Linear-48B-A3B's shapes. Then sets of BF16 weights in one launch
// (matmul16_n: odd shapes, the 48B model's KDA, MLA and shared-expert sets), each timed beside the
// same products made one by one. Run it with KLE_CUDA_SGEMM=0 and KLE_CUDA_GEMM_X16=0 too: the
// kernels these replaced, the same checks, their times beside; KLE_CUDA_X16_CLUSTER=0 (or 8): every
// split along Kd added through partials (or inside a cluster).
//   nvcc $(cat kernels-cuda/nvcc.flags) kernels-cuda/test/matmul_check.cu kernels-cuda/src/{sgemm,ops,gemm16}.cu -o matmul_check && ./matmul_check
//   ./matmul_check --check-only   (the checks alone, for compute-sanitizer)
// Exit status 1 if a case's error is past its bar: 1e-5 of the largest |y| (f32 products), 1e-2
// with BF16-rounded activations (each rounded by up to 2^-9 of itself).
#include <cuda_bf16.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <random>
#include <vector>

#include "../src/ops.cuh"

static std::mt19937 rng(11);
static float uni() { return std::uniform_real_distribution<float>(-1.f, 1.f)(rng); }
static std::vector<float> rnd(size_t n) {
  std::vector<float> v(n);
  for (auto &x : v) x = uni();
  return v;
}
static float *up(const std::vector<float> &h) {
  float *d;
  cudaMalloc(&d, h.size() * sizeof(float));
  cudaMemcpy(d, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice);
  return d;
}
static float *zeros(size_t n) {
  float *d;
  cudaMalloc(&d, n * sizeof(float));
  cudaMemset(d, 0xff, n * sizeof(float));  // NaN: a value left unwritten fails the check
  return d;
}
static std::vector<float> down(const float *d, size_t n) {
  std::vector<float> h(n);
  cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost);
  return h;
}
static int fails = 0;
static void report(const char *what, const std::vector<float> &y, const std::vector<double> &ref, double bar = 1e-5) {
  double mx = 0, err = 0;
  for (size_t i = 0; i < ref.size(); i++) mx = fmax(mx, fabs(ref[i]));
  for (size_t i = 0; i < ref.size(); i++) err = fmax(err, std::isfinite(y[i]) ? fabs(y[i] - ref[i]) : INFINITY);
  const double rel = err / (mx > 0 ? mx : 1);
  const bool ok = rel < bar;
  fails += !ok;
  printf("%-52s max |y - ref| / max |ref| = %.2e  %s\n", what, rel, ok ? "ok" : "FAIL");
}
// microseconds a call, median of 7 runs of 20 calls
template <class F>
static double time_us(F f) {
  cudaEvent_t a, b;
  cudaEventCreate(&a), cudaEventCreate(&b);
  for (int i = 0; i < 5; i++) f();
  std::vector<float> ms;
  for (int r = 0; r < 7; r++) {
    cudaEventRecord(a);
    for (int i = 0; i < 20; i++) f();
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float t;
    cudaEventElapsedTime(&t, a, b);
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  cudaEventDestroy(a), cudaEventDestroy(b);
  return ms[3] * 1000.0 / 20;
}

// Y[T, N] = X W^T through matmul, with the workspace it asks for (split) or none
static void matmul_case(int T, int N, int Kd, bool with_ws, bool timed) {
  const auto w = rnd((size_t)N * Kd), x = rnd((size_t)T * Kd);
  std::vector<double> ref((size_t)T * N);
  for (int t = 0; t < T; t++)
    for (int n = 0; n < N; n++) {
      double s = 0;
      for (int k = 0; k < Kd; k++) s += (double)w[(size_t)n * Kd + k] * x[(size_t)t * Kd + k];
      ref[(size_t)t * N + n] = s;
    }
  float *W = up(w), *X = up(x), *Y = zeros((size_t)T * N);
  const long wsn = with_ws ? kle_ops::matmul_ws_floats(T, N, Kd) : 0;
  float *ws = wsn > 0 ? zeros(wsn) : nullptr;
  kle_ops::matmul(W, X, Y, T, N, Kd, 0, ws, wsn);
  char what[128];
  snprintf(what, sizeof what, "matmul T=%d N=%d Kd=%d%s", T, N, Kd, wsn > 0 ? " split" : "");
  report(what, down(Y, (size_t)T * N), ref);
  if (timed) printf("  time: %8.2f us\n", time_us([&] { kle_ops::matmul(W, X, Y, T, N, Kd, 0, ws, wsn); }));
  cudaFree(W), cudaFree(X), cudaFree(Y), cudaFree(ws);
}

static void absorb_case(int T, int H, int nope, int rope, int R, bool timed) {
  const auto w = rnd((size_t)H * nope * R), q = rnd((size_t)T * H * (nope + rope));
  const int Dq = nope + rope, Dc = R + rope;
  std::vector<double> ref((size_t)T * H * Dc);
  for (int t = 0; t < T; t++)
    for (int h = 0; h < H; h++) {
      const float *qh = q.data() + ((size_t)t * H + h) * Dq;
      double *o = ref.data() + ((size_t)t * H + h) * Dc;
      for (int r = 0; r < R; r++) {
        double s = 0;
        for (int n = 0; n < nope; n++) s += (double)w[((size_t)h * nope + n) * R + r] * qh[n];
        o[r] = s;
      }
      for (int i = 0; i < rope; i++) o[R + i] = qh[nope + i];
    }
  float *W = up(w), *Q = up(q), *Y = zeros(ref.size());
  kle_ops::mla_absorb(W, Q, Y, T, H, nope, rope, R, 0);
  char what[128];
  snprintf(what, sizeof what, "mla_absorb T=%d H=%d nope=%d rope=%d R=%d", T, H, nope, rope, R);
  report(what, down(Y, ref.size()), ref);
  if (timed) printf("  time: %8.2f us\n", time_us([&] { kle_ops::mla_absorb(W, Q, Y, T, H, nope, rope, R, 0); }));
  cudaFree(W), cudaFree(Q), cudaFree(Y);
}

static void up_v_case(int T, int H, int vh, int R, bool timed) {
  const auto w = rnd((size_t)H * vh * R), o = rnd((size_t)T * H * R);
  std::vector<double> ref((size_t)T * H * vh);
  for (int t = 0; t < T; t++)
    for (int h = 0; h < H; h++)
      for (int v = 0; v < vh; v++) {
        double s = 0;
        for (int r = 0; r < R; r++) s += (double)w[((size_t)h * vh + v) * R + r] * o[((size_t)t * H + h) * R + r];
        ref[((size_t)t * H + h) * vh + v] = s;
      }
  float *W = up(w), *O = up(o), *Y = zeros(ref.size());
  kle_ops::mla_up_v(W, O, Y, T, H, vh, R, 0);
  char what[128];
  snprintf(what, sizeof what, "mla_up_v T=%d H=%d vh=%d R=%d", T, H, vh, R);
  report(what, down(Y, ref.size()), ref);
  if (timed) printf("  time: %8.2f us\n", time_us([&] { kle_ops::mla_up_v(W, O, Y, T, H, vh, R, 0); }));
  cudaFree(W), cudaFree(O), cudaFree(Y);
}

static float bf16_value(uint16_t h) {
  const uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
// Y[T, N] = X W^T over BF16 weights through matmul16 (columns n % every == 0 checked)
static void bf16_case(int T, int N, int Kd, bool round, int every, bool timed) {
  std::vector<uint16_t> w((size_t)N * Kd);
  for (auto &v : w) v = __bfloat16_as_ushort(__float2bfloat16_rn(uni()));
  const auto x = rnd((size_t)T * Kd);
  std::vector<double> ref;
  std::vector<size_t> at;
  for (int t = 0; t < T; t++)
    for (int n = 0; n < N; n += every) {
      double s = 0;
      for (int k = 0; k < Kd; k++) s += (double)bf16_value(w[(size_t)n * Kd + k]) * x[(size_t)t * Kd + k];
      ref.push_back(s);
      at.push_back((size_t)t * N + n);
    }
  uint16_t *W;
  cudaMalloc(&W, w.size() * 2);
  cudaMemcpy(W, w.data(), w.size() * 2, cudaMemcpyHostToDevice);
  float *X = up(x), *Y = zeros((size_t)T * N);
  const long wsn = kle_ops::matmul16_ws_floats(T, N, Kd);
  float *ws = wsn > 0 ? zeros(wsn) : nullptr;
  kle_ops::matmul16(1, W, X, Y, T, N, Kd, 0, ws, wsn, round);
  const auto all = down(Y, (size_t)T * N);
  std::vector<float> y;
  for (size_t i : at) y.push_back(all[i]);
  char what[128];
  snprintf(what, sizeof what, "bf16 matmul T=%d N=%d Kd=%d%s%s", T, N, Kd, round ? " bf16-rounded" : "", every > 1 ? " (sampled)" : "");
  report(what, y, ref, round ? 1e-2 : 1e-5);
  if (timed) {
    const double us = time_us([&] { kle_ops::matmul16(1, W, X, Y, T, N, Kd, 0, ws, wsn, round); });
    printf("  time: %8.2f us  %6.1f TFLOP/s\n", us, 2.0 * T * N * Kd / us * 1e-6);
  }
  cudaFree(W), cudaFree(X), cudaFree(Y), cudaFree(ws);
}

// Y_i = X_i W_i^T for a set of BF16 weights of one width through matmul16_n (one launch; `xs`:
// entry i takes activation matrix xs[i]), columns n % every == 0 checked; timed beside the same
// products made one by one through matmul16
static void set_case(const char *name, int T, int Kd, std::vector<int> Ns, std::vector<int> xs, int every, bool timed) {
  const int n = (int)Ns.size(), nx = *std::max_element(xs.begin(), xs.end()) + 1;
  std::vector<std::vector<float>> x(nx);
  std::vector<float *> Xd(nx);
  for (int j = 0; j < nx; j++) x[j] = rnd((size_t)T * Kd), Xd[j] = up(x[j]);
  kle_ops::mv_set set = {};
  std::vector<std::vector<uint16_t>> w(n);
  std::vector<uint16_t *> Wd(n);
  std::vector<float *> Yd(n);
  for (int i = 0; i < n; i++) {
    w[i].resize((size_t)Ns[i] * Kd);
    for (auto &v : w[i]) v = __bfloat16_as_ushort(__float2bfloat16_rn(uni()));
    cudaMalloc(&Wd[i], w[i].size() * 2);
    cudaMemcpy(Wd[i], w[i].data(), w[i].size() * 2, cudaMemcpyHostToDevice);
    Yd[i] = zeros((size_t)T * Ns[i]);
    set.e[i] = {Wd[i], Xd[xs[i]], Yd[i], Ns[i], Kd, kle_ops::MV_BF16, 0};
  }
  set.n = n;
  const long wsn = kle_ops::matmul16_n_ws_floats(set, T);
  float *ws = wsn > 0 ? zeros(wsn) : nullptr;
  const bool ran = wsn >= 0 && kle_ops::matmul16_n(set, T, 0, ws, wsn);
  if (!ran) {
    printf("%-52s not taken by matmul16_n  FAIL\n", name);
    fails++;
  }
  for (int i = 0; i < n && ran; i++) {
    std::vector<double> ref;
    std::vector<size_t> at;
    for (int t = 0; t < T; t++)
      for (int r = 0; r < Ns[i]; r += every) {
        double acc = 0;
        for (int k = 0; k < Kd; k++) acc += (double)bf16_value(w[i][(size_t)r * Kd + k]) * x[xs[i]][(size_t)t * Kd + k];
        ref.push_back(acc);
        at.push_back((size_t)t * Ns[i] + r);
      }
    const auto all = down(Yd[i], (size_t)T * Ns[i]);
    std::vector<float> y;
    for (size_t j : at) y.push_back(all[j]);
    char what[128];
    snprintf(what, sizeof what, "%s T=%d: %d x %d (X%d)%s", name, T, Ns[i], Kd, xs[i], every > 1 ? " (sampled)" : "");
    report(what, y, ref, 1e-2);
  }
  if (timed && ran) {
    double flop = 0;
    for (int N : Ns) flop += 2.0 * T * N * Kd;
    long one_ws = 0;
    for (int N : Ns) one_ws = std::max(one_ws, kle_ops::matmul16_ws_floats(T, N, Kd));
    float *ws1 = one_ws > 0 ? zeros(one_ws) : nullptr;
    const double us = time_us([&] { kle_ops::matmul16_n(set, T, 0, ws, wsn); });
    const double us1 = time_us([&] {
      for (int i = 0; i < n; i++) kle_ops::matmul16(1, Wd[i], Xd[xs[i]], Yd[i], T, Ns[i], Kd, 0, ws1, one_ws, true);
    });
    printf("  time: %8.2f us  %6.1f TFLOP/s one launch; %8.2f us one by one\n", us, flop / us * 1e-6, us1);
    cudaFree(ws1);
  }
  for (int i = 0; i < n; i++) cudaFree(Wd[i]), cudaFree(Yd[i]);
  for (auto d : Xd) cudaFree(d);
  cudaFree(ws);
}

int main(int argc, char **argv) {
  const bool timed = !(argc > 1 && !strcmp(argv[1], "--check-only"));  // under compute-sanitizer: no timing
  printf("KLE_CUDA_SGEMM=%s\n", kle_ops::sgemm_enabled() ? "1 (sgemm)" : "0 (matvec kernels)");
  // odd shapes: tails of M and N, a Kd the tiles do not take (the old kernels), no workspace
  matmul_case(9, 100, 48, true, false);
  matmul_case(64, 100, 48, true, false);
  matmul_case(77, 70, 64, true, false);
  matmul_case(77, 70, 64, false, false);
  matmul_case(100, 33, 40, true, false);
  absorb_case(19, 3, 32, 8, 128, false);
  absorb_case(70, 3, 32, 8, 128, false);
  up_v_case(70, 3, 24, 128, false);
  // the 48B shapes, checked and timed: the router (2304 -> 256), W_uk, W_uv
  for (int T : {16, 32, 64, 128, 256, 512}) {
    if (!timed && T > 64) continue;
    matmul_case(T, 256, 2304, true, timed);
    absorb_case(T, 32, 128, 64, 512, timed);
    up_v_case(T, 32, 128, 512, timed);
  }
  const char *gx = getenv("KLE_CUDA_GEMM_X16");
  printf("KLE_CUDA_GEMM_X16=%s\n", gx && gx[0] == '0' ? "0 (deep kernel)" : "1 (x16 kernel from 128 tokens)");
  for (bool round : {false, true}) {
    bf16_case(9, 200, 128, round, 1, false);
    bf16_case(37, 130, 192, round, 1, false);
    bf16_case(300, 96, 64, round, 1, false);
    bf16_case(130, 301, 192, round, 1, false);  // 128-token tiles: a row and a column tail, odd rows
    bf16_case(515, 512, 4096, round, 3, false);
  }
  // the 48B model's batched matmuls at 256 streams (BF16 precision, then f32-accurate): KDA's
  // q/k/v (4096 x 2304), its output (2304 x 4096), the shared expert's (1024 x 2304), the LM head
  // (every 7th column, every 61st of the LM head's: the host's float64 products take seconds)
  for (bool round : {true, false})
    for (int T : {64, 256}) {
      if (!timed && T > 64) continue;
      bf16_case(T, 4096, 2304, round, 7, timed);
      bf16_case(T, 2304, 4096, round, 7, timed);
      bf16_case(T, 1024, 2304, round, 7, timed);
      if (timed) bf16_case(T, 163840, 2304, round, 61, timed);
    }
  // sets of weights in one launch (BF16 precision): odd shapes (tails, a second activation
  // matrix), then the 48B model's at 256 streams: KDA's six projections of h and the two low-rank
  // second halves, MLA's q and kv_a, the shared expert's gate and up
  const char *gc = getenv("KLE_CUDA_X16_CLUSTER");
  printf("KLE_CUDA_X16_CLUSTER=%s (splits added in a cluster up to that many, more through partials)\n", gc ? gc : "2");
  set_case("set", 130, 192, {300, 64, 129}, {0, 0, 1}, 1, false);
  set_case("set", 300, 128, {40, 256}, {1, 0}, 1, false);
  set_case("set", 130, 2304, {96, 203}, {0, 0}, 1, false);  // split along Kd, row and column tails
  for (int T : {128, 256}) {
    if (!timed && T > 128) continue;
    set_case("kda q k v f_a beta g_a", T, 2304, {4096, 4096, 4096, 128, 32, 128}, {0, 0, 0, 0, 0, 0}, 7, timed);
    set_case("kda f_b g_b", T, 128, {4096, 4096}, {0, 1}, 7, timed);
    set_case("mla q kv_a", T, 2304, {6144, 576}, {0, 0}, 7, timed);
    set_case("shared gate up", T, 2304, {1024, 1024}, {0, 0}, 7, timed);
  }
  printf("%s\n", fails ? "FAILED" : "all within their bars");
  return fails ? 1 : 0;
}
