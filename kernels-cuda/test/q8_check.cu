// q8_check.cu: the Q8_0 matmuls of gemm_q8.cu against float64 products of the same values on the
// host, over the shapes and paths the engine takes: matvecs of 1 to 8 tokens (columns split
// across warps or not), tensor-core GEMMs (split along Kd or not, f32-accurate or with the
// activations rounded to BF16), and the grouped experts' GEMM with 64- and 16-row tiles, one
// expert taking every token.
//   nvcc $(cat kernels-cuda/nvcc.flags) kernels-cuda/test/q8_check.cu kernels-cuda/src/{gemm_q8,gemm16,ops}.cu -o q8_check && ./q8_check
// Exit status 1 if a case is past its bar: 1e-5 of the largest |y| (f32 products), 1e-2 with
// BF16-rounded activations (each rounded by up to 2^-9 of itself).
#include <cuda_fp16.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <random>
#include <vector>

#include "../src/ops.cuh"

static std::mt19937 rng(7);
static float uni() { return std::uniform_real_distribution<float>(-1.f, 1.f)(rng); }

struct Q8 {  // host copy in the device's q8 layout, and the values it stands for
  std::vector<int8_t> q;
  std::vector<uint16_t> d;
  int N, Kd;
  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> b(q.size() + 2 * d.size());
    memcpy(b.data(), q.data(), q.size());
    memcpy(b.data() + q.size(), d.data(), 2 * d.size());
    return b;
  }
};
// W[r] . x in float64 over the values the quants and scales stand for
static double dot_ref(const Q8 &w, int r, const float *x) {
  double s = 0;
  for (int k = 0; k < w.Kd; k++)
    s += (double)__half2float(__ushort_as_half(w.d[((size_t)r * w.Kd + k) / 32])) * w.q[(size_t)r * w.Kd + k] * x[k];
  return s;
}
static Q8 make(int N, int Kd) {
  Q8 m{std::vector<int8_t>((size_t)N * Kd), std::vector<uint16_t>((size_t)N * Kd / 32), N, Kd};
  for (auto &v : m.q) v = (int8_t)(rng() % 255 - 127);
  for (auto &v : m.d) v = __half_as_ushort(__float2half(0.001f + 0.02f * (uni() + 1.f)));
  return m;
}
template <typename T>
static T *up(const std::vector<T> &h) {
  T *d;
  cudaMalloc(&d, h.size() * sizeof(T));
  cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}
static int fails = 0;
static void report(const char *what, const std::vector<float> &y, const std::vector<double> &ref, double bar) {
  double mx = 0, err = 0;
  for (size_t i = 0; i < ref.size(); i++) mx = fmax(mx, fabs(ref[i]));
  for (size_t i = 0; i < ref.size(); i++) err = fmax(err, fabs(y[i] - ref[i]));
  const double rel = err / (mx > 0 ? mx : 1);
  const bool ok = rel < bar && std::isfinite(rel);
  fails += !ok;
  printf("%-58s max |y - ref| / max |ref| = %.2e  %s\n", what, rel, ok ? "ok" : "FAIL");
}

static void matmul_case(int T, int N, int Kd, bool rnd = false) {
  const Q8 w = make(N, Kd);
  std::vector<float> x((size_t)T * Kd);
  for (auto &v : x) v = uni();
  std::vector<double> ref((size_t)T * N);
  for (int t = 0; t < T; t++)
    for (int r = 0; r < N; r++) ref[(size_t)t * N + r] = dot_ref(w, r, x.data() + (size_t)t * Kd);
  uint8_t *W = up(w.bytes());
  float *X = up(x), *Y, *ws;
  cudaMalloc(&Y, sizeof(float) * T * N);
  const long wsn = kle_ops::matmul16_ws_floats(T, N, Kd);
  cudaMalloc(&ws, sizeof(float) * (wsn > 0 ? wsn : 1));
  kle_ops::matmul_q8(W, X, Y, T, N, Kd, 0, ws, wsn, rnd);
  std::vector<float> y((size_t)T * N);
  cudaMemcpy(y.data(), Y, sizeof(float) * y.size(), cudaMemcpyDeviceToHost);
  char what[128];
  snprintf(what, sizeof what, "matmul T=%d N=%d Kd=%d%s%s", T, N, Kd, wsn > 0 ? " split" : "", rnd ? " bf16-rounded" : "");
  report(what, y, ref, rnd ? 1e-2 : 1e-5);
  cudaFree(W), cudaFree(X), cudaFree(Y), cudaFree(ws);
}

// E experts' matrices [N, Kd]; T tokens with K choices each, expert 0 chosen by every token
static void grouped_case(int E, int T, int K, int N, int Kd, int few) {
  std::vector<Q8> ws;
  std::vector<void *> ptr(3 * (size_t)E, nullptr);
  for (int e = 0; e < E; e++) {
    ws.push_back(make(N, Kd));
    ptr[3 * e + 1] = up(ws.back().bytes());
  }
  std::vector<int32_t> idx((size_t)T * K);
  for (int t = 0; t < T; t++) {
    idx[(size_t)t * K] = 0;
    for (int k = 1; k < K; k++) {
      int e;
      bool dup;
      do {
        e = 1 + rng() % (E - 1);
        dup = false;
        for (int j = 0; j < k; j++) dup |= idx[(size_t)t * K + j] == e;
      } while (dup);
      idx[(size_t)t * K + k] = e;
    }
  }
  const int P = T * K;
  std::vector<float> x((size_t)T * Kd);
  for (auto &v : x) v = uni();
  std::vector<double> ref((size_t)P * N);
  for (int p = 0; p < P; p++)
    for (int r = 0; r < N; r++) ref[(size_t)p * N + r] = dot_ref(ws[idx[p]], r, x.data() + (size_t)(p / K) * Kd);
  void **tab = up(ptr);
  int32_t *di = up(idx), *grp;
  cudaMalloc(&grp, sizeof(int32_t) * (E + 1 + P));
  float *X = up(x), *Y;
  cudaMalloc(&Y, sizeof(float) * P * N);
  kle_ops::moe_group(di, P, E, grp, grp + E + 1, 0);
  kle_ops::grouped_mm_q8(few, tab, 1, grp, grp + E + 1, E, X, K, Y, T, N, Kd, 0, false);
  std::vector<float> y((size_t)P * N);
  cudaMemcpy(y.data(), Y, sizeof(float) * y.size(), cudaMemcpyDeviceToHost);
  char what[128];
  snprintf(what, sizeof what, "grouped E=%d T=%d K=%d N=%d Kd=%d tiles of %d", E, T, K, N, Kd, few ? 16 : 64);
  report(what, y, ref, 1e-5);
  for (int e = 0; e < E; e++) cudaFree(ptr[3 * e + 1]);
  cudaFree(tab), cudaFree(di), cudaFree(grp), cudaFree(X), cudaFree(Y);
}

int main() {
  for (int T : {1, 2, 3, 5, 8})
    for (auto nk : {std::pair<int, int>{96, 128}, {4096, 2304}, {2304, 4096}, {130, 96}, {2304, 9216}}) matmul_case(T, nk.first, nk.second);
  for (int T : {12, 64, 200, 512})
    for (auto nk : {std::pair<int, int>{96, 128}, {128, 96}, {4096, 2304}, {130, 96}}) {
      matmul_case(T, nk.first, nk.second);
      if (T == 200) matmul_case(T, nk.first, nk.second, true);
    }
  for (int few : {0, 1}) {
    grouped_case(64, 200, 8, 96, 128, few);
    grouped_case(64, 200, 8, 128, 96, few);
    grouped_case(16, 12, 4, 256, 2304, few);
  }
  const cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) printf("CUDA error: %s\n", cudaGetErrorString(e));
  printf("%s\n", fails || e != cudaSuccess ? "FAILED" : "all cases within their bars");
  return fails || e != cudaSuccess;
}
