# kernels-cuda/bench/kda_layer.py LIB.so [--check-only] [--out FILE]
# Checks kle_cuda_kda_layer_step (a KDA layer's whole decode step after its projections: short
# convs, L2 norms, gates, recurrence, gated output RMSNorm) against the same step done in float64
# over three chained tokens (so the conv tails it updates are checked too), then times it inside
# CUDA graphs at Kimi-Linear-48B's shape (H=32, K=V=128, conv 4) for batch 1 and 16: back to
# back, plain and as a programmatic dependent launch (KLE_CUDA_KDA_OVERLAP); after the projection
# that precedes it in the engine (the time it adds to that projection's, both ways); and our
# recurrence-only step on the same states.
import ctypes, json, sys
import torch

import cudabench

args = sys.argv[1:]
lib = ctypes.CDLL(args[0])
check_only = "--check-only" in args
out_path = args[args.index("--out") + 1] if "--out" in args else None
dev = "cuda"
P = ctypes.c_void_p


class Args(ctypes.Structure):
    _fields_ = [(n, P) for n in ("xq", "xk", "xv", "wq", "wk", "wv", "tq", "tk", "tv", "graw", "A_log", "dt_bias")] + [
        ("lower_bound", ctypes.c_float), ("braw", P), ("oraw", P), ("onorm", P), ("eps", ctypes.c_float), ("S", P), ("o", P), ("flags", ctypes.c_int),
        ("rows", P)]  # NULL: one session's tails and state in tq/tk/tv/S (kle_cuda.h)


fl = lib.kle_cuda_kda_layer_step
fl.restype = ctypes.c_int
fl.argtypes = [ctypes.POINTER(Args)] + [ctypes.c_int] * 5 + [ctypes.c_float, ctypes.c_void_p]
OVERLAP = 2  # KLE_CUDA_KDA_OVERLAP
fm = lib.kle_cuda_matmul
fm.restype = ctypes.c_int
fm.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 3 + [ctypes.c_void_p]
fs = lib.kle_cuda_kda_step
fs.restype = ctypes.c_int
fs.argtypes = [ctypes.c_void_p] * 7 + [ctypes.c_int] * 4 + [ctypes.c_float, ctypes.c_int, ctypes.c_void_p]


def ptr(t):
    return None if t is None else t.data_ptr()


def make(B, H, K, V, W, lb, with_dt, gen, dtype=torch.float32):
    """one layer's weights and one sequence batch's state, tails and per-token inputs"""
    r = lambda *s: torch.randn(*s, device=dev, generator=gen, dtype=dtype)
    HK, HV = H * K, H * V
    m = {"wq": r(W, HK) * 0.5, "wk": r(W, HK) * 0.5, "wv": r(W, HV) * 0.5, "A_log": r(H) * 0.5,
         "dt_bias": r(HK) if with_dt else None, "onorm": 1 + 0.1 * r(V), "lb": lb,
         "tq": r(B, W - 1, HK), "tk": r(B, W - 1, HK), "tv": r(B, W - 1, HV), "S": r(B, H, K, V) * 0.05}
    toks = [{"xq": r(B, HK), "xk": r(B, HK), "xv": r(B, HV), "graw": r(B, HK), "braw": r(B, H), "oraw": r(B, HV)} for _ in range(3)]
    return m, toks


def run(m, t, o, B, H, K, V, W, scale, eps, flags=0):
    a = Args(ptr(t["xq"]), ptr(t["xk"]), ptr(t["xv"]), ptr(m["wq"]), ptr(m["wk"]), ptr(m["wv"]), ptr(m["tq"]), ptr(m["tk"]), ptr(m["tv"]),
             ptr(t["graw"]), ptr(m["A_log"]), ptr(m["dt_bias"]), m["lb"], ptr(t["braw"]), ptr(t["oraw"]), ptr(m["onorm"]), eps, ptr(m["S"]), ptr(o), flags)
    rc = fl(ctypes.byref(a), B, H, K, V, W, scale, torch.cuda.current_stream().cuda_stream)
    assert rc == 0, rc


def ref_step(m, t, B, H, K, V, W, scale, eps):
    """the same step in float64, updating m's state and tails in place; returns o [B, H*V]"""
    def conv(x, w, tail):
        win = torch.cat([tail, x[:, None, :]], dim=1)  # [B, W, C]
        y = (win * w[None]).sum(1)
        tail.copy_(win[:, 1:, :])
        return y * torch.sigmoid(y)
    q = conv(t["xq"], m["wq"], m["tq"]).view(B, H, K)
    k = conv(t["xk"], m["wk"], m["tk"]).view(B, H, K)
    v = conv(t["xv"], m["wv"], m["tv"]).view(B, H, V)
    q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6)
    k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    z = (t["graw"] + (m["dt_bias"] if m["dt_bias"] is not None else 0)).view(B, H, K)
    a = torch.exp(m["A_log"])[None, :, None]
    g = -a * torch.nn.functional.softplus(z) if m["lb"] == 0 else m["lb"] * torch.sigmoid(a * z)
    beta = torch.sigmoid(t["braw"])
    S = m["S"] * torch.exp(g)[..., None]
    u = v - torch.einsum("bhkv,bhk->bhv", S, k)
    S = S + beta[..., None, None] * k[..., None] * u[:, :, None, :]
    m["S"].copy_(S)
    o = scale * torch.einsum("bhkv,bhk->bhv", S, q)
    o = o / torch.sqrt((o * o).mean(-1, keepdim=True) + eps) * m["onorm"] * torch.sigmoid(t["oraw"].view(B, H, V))
    return o.reshape(B, H * V)


def rel(x, ref):
    return ((x.double() - ref).norm() / ref.norm()).item()


results = {"gpu": torch.cuda.get_device_name(0), "checks": [], "timing": []}
worst = 0.0
gen = torch.Generator(device=dev).manual_seed(11)
for (B, H, K, V, W, lb, with_dt) in [(1, 32, 128, 128, 4, 0.0, True), (3, 4, 64, 64, 4, -5.0, False), (2, 2, 128, 256, 2, 0.0, True),
                                     (40, 8, 128, 128, 4, 0.0, True), (2, 3, 64, 96, 1, 0.0, True),
                                     (2, 2, 64, 64, 6, -5.0, True), (30, 8, 64, 128, 7, 0.0, False),
                                     (40, 4, 128, 256, 4, 0.0, True), (60, 4, 64, 96, 3, 0.0, True)]:
    scale, eps = K ** -0.5, 1e-5
    m, toks = make(B, H, K, V, W, lb, with_dt, gen)
    md = {k_: (v_.double().clone() if torch.is_tensor(v_) else v_) for k_, v_ in m.items()}
    o = torch.empty(B, H * V, device=dev)
    eo = 0.0
    flags = OVERLAP if len(results["checks"]) % 2 else 0  # the overlapped launch on every other shape
    for t in toks:
        run(m, t, o, B, H, K, V, W, scale, eps, flags)
        ro = ref_step(md, {k_: v_.double() for k_, v_ in t.items()}, B, H, K, V, W, scale, eps)
        torch.cuda.synchronize()
        eo = max(eo, rel(o, ro))
    es = rel(m["S"], md["S"])
    et = max(rel(m[n], md[n]) for n in ("tq", "tk", "tv")) if W > 1 else 0.0
    worst = max(worst, eo, es, et)
    results["checks"].append({"B": B, "H": H, "K": K, "V": V, "W": W, "lowerBound": lb, "dtBias": with_dt, "flags": flags, "tokens": 3,
                              "relErrO": eo, "relErrState": es, "relErrTails": et})
    print(f"layer step B={B:2d} H={H:2d} K={K} V={V} W={W} lb={lb} flags {flags}: o {eo:.2e}  state {es:.2e}  tails {et:.2e}  {'ok' if max(eo, es, et) < 1e-5 else 'FAIL'}")
cudabench.finish_checks(results, worst, check_only)

H, K, V, W = 32, 128, 128, 4
for B in (1, 16):
    one = B * H * K * V * 4
    n = cudabench.copies_past_l2(one)
    layers = [make(B, H, K, V, W, 0.0, True, gen) for _ in range(n)]
    # each copy's own projection weights (so they stream from HBM too): the last projection the
    # engine runs before the step, the output gate's low-rank second half (128 -> H V at 48B)
    wproj = [torch.randn(H * V, 128, device=dev) * 0.1 for _ in range(n)]
    hproj = torch.randn(B, 128, device=dev)
    q, k, v, g, beta, o = cudabench.kda_inputs((B, H), K, V)  # o [B, H, V] serves both kernels
    st = lambda: torch.cuda.current_stream().cuda_stream
    def proj(i):
        assert fm(wproj[i].data_ptr(), hproj.data_ptr(), layers[i][1][0]["oraw"].data_ptr(), B, H * V, 128, st()) == 0
    def layer(flags):
        def f():
            for m, toks in layers:
                run(m, toks[0], o, B, H, K, V, W, K ** -0.5, 1e-5, flags)
        return f
    def with_proj(flags):
        def f():
            for i, (m, toks) in enumerate(layers):
                proj(i)
                run(m, toks[0], o, B, H, K, V, W, K ** -0.5, 1e-5, flags)
        return f
    def proj_only():
        for i in range(n):
            proj(i)
    def step_only():
        for m, _ in layers:
            assert fs(m["S"].data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), g.data_ptr(), beta.data_ptr(), o.data_ptr(), B, H, K, V, K ** -0.5, 0, st()) == 0
    it = max(1, 64 // n)
    t = lambda fn: cudabench.graph_time(fn, 50, it, warmup=3) / n
    tf, tfo, ts, tp = t(layer(0)), t(layer(OVERLAP)), t(step_only), t(proj_only)
    tw, two = t(with_proj(0)), t(with_proj(OVERLAP))
    row = {"B": B, "H": H, "K": K, "V": V, "W": W, "stateCopies": n, "layerStepUs": tf, "layerStepTBs": 2 * one / (tf * 1e-6) / 1e12,
           "layerStepOverlapUs": tfo, "recurrenceStepUs": ts, "projUs": tp, "projThenStepUs": tw, "projThenStepOverlapUs": two,
           "beyondProjUs": tw - tp, "beyondProjOverlapUs": two - tp}
    results["timing"].append(row)
    print(f"B={B:3d} H={H} K=V={K} W={W} ({n} copies): whole layer step {tf:.2f} us ({row['layerStepTBs']:.2f} TB/s of state traffic), "
          f"overlapped launch {tfo:.2f} us; recurrence-only step {ts:.2f} us; after its projection (128 -> {H * V}, {tp:.2f} us alone) "
          f"the step adds {tw - tp:.2f} us, {two - tp:.2f} us overlapped")
    del layers, wproj
if out_path:
    with open(out_path, "w") as fh:
        json.dump(results, fh, indent=1)
