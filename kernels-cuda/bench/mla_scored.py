# kernels-cuda/bench/mla_scored.py LIB.so [--check-only] [--out FILE]
# The bounded MLA cache's scored attention (kle_cuda_mla_attend_scored, docs/kv-budget.md) on its
# own: checked against float64 attention and the score rule (score = decay * score + mean over
# heads of each query's softmax weight, a query's own row starting fresh), then one decode query
# timed beside the unscored kernel the engine otherwise runs (kle_cuda_mla_attend), two ways:
# inside a CUDA graph (the GPU's time alone) and launched one call at a time from the host (what
# an engine step pays). The difference between the two says how much of the scored path's cost
# is launches rather than work.
import ctypes, json, sys, time
import torch

import cudabench

args = sys.argv[1:]
lib = ctypes.CDLL(args[0])
out_path = args[args.index("--out") + 1] if "--out" in args else None
dev = "cuda"
torch.backends.cuda.matmul.allow_tf32 = False
fa = lib.kle_cuda_mla_attend
fa.restype = ctypes.c_int
fa.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p]
fs = lib.kle_cuda_mla_attend_scored
fs.restype = ctypes.c_int
fs.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p]
wa = lib.kle_cuda_mla_attend_workspace_bytes
wa.restype = ctypes.c_long
wa.argtypes = [ctypes.c_int] * 4
ws_ = lib.kle_cuda_mla_attend_scored_workspace_bytes
ws_.restype = ctypes.c_long
ws_.argtypes = [ctypes.c_int] * 4

results = {"gpu": torch.cuda.get_device_name(0), "checks": [], "timing": []}
g = torch.Generator(device=dev).manual_seed(7)
worst = 0.0
for (H, Dl, Dr, L0, T, decay) in [(8, 256, 32, 0, 1, 0.9), (8, 256, 32, 4096, 1, 1.0), (32, 512, 64, 3000, 1, 0.95), (4, 64, 16, 100, 37, 0.8), (32, 512, 64, 500, 64, 1.0)]:
    D, Dv, L = Dl + Dr, Dl, L0 + T
    q = torch.randn(T, H, D, device=dev, generator=g)
    cache = torch.randn(L, D, device=dev, generator=g)
    score = torch.rand(L, device=dev, generator=g)
    scale = (128 + Dr) ** -0.5
    want_score = score.double().clone()
    ws = torch.empty(max(1, ws_(L, T, H, Dv)) // 4 + 1, device=dev)
    out = torch.empty(T, H, Dv, device=dev)
    rc = fs(q.data_ptr(), cache.data_ptr(), 0, L0, T, H, D, Dv, scale, out.data_ptr(), score.data_ptr(), decay, ws.data_ptr(), ws.numel() * 4, torch.cuda.current_stream().cuda_stream)
    assert rc == 0, rc
    torch.cuda.synchronize()
    ref_out = torch.empty(T, H, Dv, dtype=torch.float64, device=dev)
    for t in range(T):
        n = L0 + t + 1
        p = torch.softmax((q[t].double() @ cache[:n].double().T) * scale, dim=-1)  # [H, n]
        ref_out[t] = p @ cache[:n, :Dv].double()
        want_score[: n - 1] *= decay
        want_score[n - 1] = 0
        want_score[:n] += p.mean(0)
    e_out = ((out.double() - ref_out).norm() / ref_out.norm()).item()
    e_sc = ((score.double() - want_score).norm() / want_score.norm()).item()
    worst = max(worst, e_out, e_sc)
    results["checks"].append({"H": H, "D": D, "Dv": Dv, "L0": L0, "T": T, "decay": decay, "outRelErr": e_out, "scoreRelErr": e_sc})
    print(f"H={H:2d} D={Dl}+{Dr} L0={L0:5d} T={T:2d} decay {decay}: out rel err {e_out:.2e}, score rel err {e_sc:.2e}  {'ok' if max(e_out, e_sc) < 1e-5 else 'FAIL'}")
cudabench.finish_checks(results, worst, "--check-only" in args)
if worst >= cudabench.BAR:
    sys.exit(1)

# one decode query (T = 1) over L rows: the study hybrid's MLA shape and Kimi-Linear-48B's
for (H, Dl, Dr, L) in [(8, 256, 32, 4097), (32, 512, 64, 4097), (32, 512, 64, 65537)]:
    D, Dv = Dl + Dr, Dl
    q = torch.randn(1, H, D, device=dev, generator=g)
    cache = torch.randn(L, D, device=dev, generator=g)
    score = torch.zeros(L, device=dev)
    out = torch.empty(1, H, Dv, device=dev)
    scale = (128 + Dr) ** -0.5
    st = torch.cuda.current_stream().cuda_stream
    wsa = torch.empty(max(1, wa(L, 1, H, Dv)) // 4 + 1, device=dev)
    wss = torch.empty(max(1, ws_(L, 1, H, Dv)) // 4 + 1, device=dev)
    calls = {
        "unscored": lambda: fa(q.data_ptr(), cache.data_ptr(), 0, L - 1, 1, H, D, Dv, scale, out.data_ptr(), wsa.data_ptr(), wsa.numel() * 4, torch.cuda.current_stream().cuda_stream),
        "scored": lambda: fs(q.data_ptr(), cache.data_ptr(), 0, L - 1, 1, H, D, Dv, scale, out.data_ptr(), score.data_ptr(), 1.0, wss.data_ptr(), wss.numel() * 4, torch.cuda.current_stream().cuda_stream),
    }
    row = {"H": H, "D": D, "Dv": Dv, "L": L}
    for name, fn in calls.items():
        row[f"{name}GraphUs"] = cudabench.graph_time(fn, 20, 50, 5)
        torch.cuda.synchronize()
        ts = []
        for _ in range(200):
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            ts.append((time.perf_counter() - t0) * 1e6)
        ts.sort()
        row[f"{name}CallUs"] = ts[len(ts) // 2]
    results["timing"].append(row)
    print(f"H={H:2d} D={Dl}+{Dr} L={L:6d}: GPU time in a graph unscored {row['unscoredGraphUs']:.1f} us, scored {row['scoredGraphUs']:.1f} us; "
          f"one call + sync from the host unscored {row['unscoredCallUs']:.1f} us, scored {row['scoredCallUs']:.1f} us")
if out_path:
    with open(out_path, "w") as fh:
        json.dump(results, fh, indent=2)
