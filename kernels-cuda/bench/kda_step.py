# kernels-cuda/bench/kda_step.py LIB.so [--check-only] [--fla PATH] [--probe COPYPROBE.so] [--out FILE]
# On the GPU machine: checks kle_cuda_kda_step, the token-by-token prefill and the chunked
# prefill against the shared KDA vectors (every file; outputs and final state under 1e-5
# relative error) and the chunked prefill against a float64 recurrence on a ragged, strongly
# decayed 48B-shape problem, then times them inside CUDA graphs at Kimi-Linear-48B shape (H=32,
# K=V=128, f32 state): the step for batch 1, 16, 64, 128 (plain, and as a programmatic dependent
# launch) next to fla's fused_recurrent_kda and the card's copy bandwidth; prefill at 16K..256K tokens next to fla's chunk_kda.
import ctypes, glob, json, os, sys, time
import torch

import cudabench
from safetensors import safe_open

args = sys.argv[1:]
lib = ctypes.CDLL(args[0])
check_only = "--check-only" in args
fla_path = args[args.index("--fla") + 1] if "--fla" in args else None
probe = None
if "--probe" in args:  # src/probe.cu, in libklecuda.so
    probe = ctypes.CDLL(args[args.index("--probe") + 1])
    for fn in (probe.probe_copy, probe.probe_read):
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p]
out_path = args[args.index("--out") + 1] if "--out" in args else None
here = os.path.dirname(os.path.abspath(__file__))
fixtures = os.path.join(here, "..", "..", "test", "fixtures")
dev = "cuda"
f = lib.kle_cuda_kda_step
f.restype = ctypes.c_int
f.argtypes = [ctypes.c_void_p] * 7 + [ctypes.c_int] * 4 + [ctypes.c_float, ctypes.c_int, ctypes.c_void_p]


fr = lib.kle_cuda_kda_recurrent
fr.restype = ctypes.c_int
fr.argtypes = [ctypes.c_void_p] * 7 + [ctypes.c_int] * 4 + [ctypes.c_float, ctypes.c_int, ctypes.c_void_p]


fc = lib.kle_cuda_kda_chunk
fc.restype = ctypes.c_int
fc.argtypes = [ctypes.c_void_p] * 7 + [ctypes.c_int] * 4 + [ctypes.c_float, ctypes.c_int, ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p]
fcw = lib.kle_cuda_kda_chunk_workspace_bytes
fcw.restype = ctypes.c_long
fcw.argtypes = [ctypes.c_int] * 4


def chunk_ws(T, H, K, V):
    return torch.empty(fcw(T, H, K, V) // 4, device=dev)


def chunked(S, q, k, v, g, beta, o, scale, flags=0, ws=None):
    T, H, K = q.shape
    V = v.shape[-1]
    ws = chunk_ws(T, H, K, V) if ws is None else ws
    rc = fc(S.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), g.data_ptr(), beta.data_ptr(), o.data_ptr(), T, H, K, V, scale, flags, ws.data_ptr(), ws.numel() * 4, torch.cuda.current_stream().cuda_stream)
    assert rc == 0, rc


def recurrent(S, q, k, v, g, beta, o, scale, flags=0):
    # one sequence: S [H,K,V]; q, k, g [T,H,K]; v, o [T,H,V]; beta [T,H]
    T, H, K = q.shape
    rc = fr(S.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), g.data_ptr(), beta.data_ptr(), o.data_ptr(), T, H, K, v.shape[-1], scale, flags, torch.cuda.current_stream().cuda_stream)
    assert rc == 0, rc


def step(S, q, k, v, g, beta, o, scale, flags=0):
    B, H, K, V = S.shape
    stream = torch.cuda.current_stream().cuda_stream
    rc = f(S.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), g.data_ptr(), beta.data_ptr(), o.data_ptr(), B, H, K, V, scale, flags, stream)
    assert rc == 0, rc


def rel(x, ref):
    return (torch.linalg.vector_norm((x - ref).double()) / torch.linalg.vector_norm(ref.double())).item()


def sequence_err(kernel, t, scale):
    # worst relative error of outputs and final state, each sequence of the file in one call
    B, T, H, K = t["q"].shape
    V = t["v"].shape[-1]
    if K not in (32, 64, 128) or V % 32:
        return 0.0  # shapes the whole-sequence kernels refuse
    err = 0.0
    for b in range(B):
        Sb = t["initial_state"][b].clone().contiguous()
        ob = torch.empty(T, H, V, device=dev)
        kernel(Sb, *(t[n][b].contiguous() for n in ("q", "k", "v", "g", "beta")), ob, scale)
        torch.cuda.synchronize()
        err = max(err, rel(ob, t["o"][b]), rel(Sb, t["final_state"][b]))
    return err


results = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "vectors": [], "timing": []}
worst = 0.0
for path in sorted(glob.glob(os.path.join(fixtures, "kda_*.safetensors"))):
    with safe_open(path, "pt", device=dev) as sf:
        meta = sf.metadata() or {}
        t = {n: sf.get_tensor(n).float() for n in sf.keys()}
    B, T, H, K = t["q"].shape
    V = t["v"].shape[-1]
    scale = float(meta.get("scale", K ** -0.5))
    S = t["initial_state"].clone().contiguous()
    o = torch.empty(B, T, H, V, device=dev)
    ot = torch.empty(B, H, V, device=dev)
    for i in range(T):
        step(S, t["q"][:, i].contiguous(), t["k"][:, i].contiguous(), t["v"][:, i].contiguous(), t["g"][:, i].contiguous(), t["beta"][:, i].contiguous(), ot, scale)
        o[:, i] = ot
    torch.cuda.synchronize()
    eo, es = rel(o, t["o"]), rel(S, t["final_state"])
    # the in-kernel L2 norm: unnormalized q, k (scaled) must give the same answer
    S2 = t["initial_state"].clone().contiguous()
    for i in range(min(T, 8)):
        step(S2, (3 * t["q"][:, i]).contiguous(), (0.5 * t["k"][:, i]).contiguous(), t["v"][:, i].contiguous(), t["g"][:, i].contiguous(), t["beta"][:, i].contiguous(), ot, scale, 1)
    S3 = t["initial_state"].clone().contiguous()
    for i in range(min(T, 8)):
        step(S3, t["q"][:, i].contiguous(), t["k"][:, i].contiguous(), t["v"][:, i].contiguous(), t["g"][:, i].contiguous(), t["beta"][:, i].contiguous(), ot, scale, 0)
    en = rel(S2, S3)
    # the two whole-sequence kernels (the engine's prefill), one sequence at a time
    er, ec = sequence_err(recurrent, t, scale), sequence_err(chunked, t, scale)
    worst = max(worst, eo, es, en, er, ec)
    results["vectors"].append({"file": os.path.basename(path), "B": B, "T": T, "H": H, "K": K, "V": V, "relErrO": eo, "relErrState": es, "relErrL2normFlag": en})
    results["vectors"][-1]["relErrRecurrent"] = er
    results["vectors"][-1]["relErrChunk"] = ec
    print(f"{os.path.basename(path):32s} B={B} T={T} H={H} K={K} V={V}  o {eo:.2e}  state {es:.2e}  l2norm flag {en:.2e}  multi-token {er:.2e}  chunked {ec:.2e}  {'ok' if max(eo, es, en, er, ec) < 1e-5 else 'FAIL'}")


def recurrence_f64(S, q, k, v, g, beta, scale, l2norm):
    # the spec's recurrence in float64 (torch on the GPU): S [H,K,V]; q, k, g [T,H,K]; v [T,H,V]
    S, q, k, v, g, beta = (x.double() for x in (S, q, k, v, g, beta))
    if l2norm:
        q = q / torch.sqrt((q * q).sum(-1, keepdim=True) + 1e-6)
        k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    o = torch.empty(v.shape, dtype=torch.float64, device=dev)
    for i in range(q.shape[0]):
        S = S * torch.exp(g[i]).unsqueeze(-1)
        u = v[i] - torch.einsum("hkv,hk->hv", S, k[i])
        S = S + beta[i][:, None, None] * k[i].unsqueeze(-1) * u.unsqueeze(1)
        o[i] = scale * torch.einsum("hkv,hk->hv", S, q[i])
    return S, o


# chunked == recurrence at the 48B head shape: a ragged length, unnormalized q and k (the
# in-kernel L2 norm), decays from none to exp(-8) a token, against float64 and against the
# token-by-token kernel
torch.manual_seed(7)
Tx, Hx, Kx = 1000, 4, 128
qx, kx = torch.randn(Tx, Hx, Kx, device=dev) * 2, torch.randn(Tx, Hx, Kx, device=dev) * 0.5
vx = torch.randn(Tx, Hx, Kx, device=dev)
gx = -torch.rand(Tx, Hx, Kx, device=dev) ** 3 * 8
bx = torch.rand(Tx, Hx, device=dev)
S0x = torch.randn(Hx, Kx, Kx, device=dev) * 0.1
Sref, oref = recurrence_f64(S0x, qx, kx, vx, gx, bx, Kx ** -0.5, True)
Sc, oc = S0x.clone(), torch.empty_like(vx)
chunked(Sc, qx, kx, vx, gx, bx, oc, Kx ** -0.5, 1)
Sr, orr = S0x.clone(), torch.empty_like(vx)
recurrent(Sr, qx, kx, vx, gx, bx, orr, Kx ** -0.5, 1)
torch.cuda.synchronize()
eq = {"T": Tx, "H": Hx, "K": Kx, "chunkVsF64O": rel(oc, oref), "chunkVsF64State": rel(Sc, Sref),
      "recurrentVsF64O": rel(orr, oref), "recurrentVsF64State": rel(Sr, Sref), "chunkVsRecurrentO": rel(oc, orr), "chunkVsRecurrentState": rel(Sc, Sr)}
results["chunkEqualsRecurrence"] = eq
print("chunked vs recurrence (T=1000 ragged, H=4, K=V=128, l2norm flag, g down to -8): " + ", ".join(f"{k_} {v_:.2e}" for k_, v_ in eq.items() if k_.startswith(("chunk", "recurrent"))))
worst = max(worst, eq["chunkVsF64O"], eq["chunkVsF64State"], eq["chunkVsRecurrentO"], eq["chunkVsRecurrentState"])
del qx, kx, vx, gx, bx, S0x, Sref, oref, Sc, oc, Sr, orr

# the batched step in each of its layouts (whole 128-column rows a block when blocks are plenty,
# 64-column halves below about 4 waves of those, 32-column tiles when V is not a multiple of 128
# or the batch is small), three chained tokens
# against float64, with the in-kernel L2 norm (flag 1) and the overlapped launch (flag 2)
results["batched"] = []
for (Bb, Hb, Kb, Vb, fl) in [(40, 8, 128, 128, 0), (24, 8, 64, 256, 1), (40, 8, 128, 96, 2), (1, 32, 128, 128, 3), (16, 32, 128, 128, 2),
                             (36, 32, 128, 128, 1), (140, 8, 64, 128, 2)]:
    torch.manual_seed(Bb * 1000 + Vb)
    S0b = torch.randn(Bb, Hb, Kb, Vb, device=dev) * 0.1
    qb, kb = torch.randn(3, Bb, Hb, Kb, device=dev), torch.randn(3, Bb, Hb, Kb, device=dev)
    if not fl & 1:
        qb, kb = torch.nn.functional.normalize(qb, dim=-1), torch.nn.functional.normalize(kb, dim=-1)
    vb, gb, bb = torch.randn(3, Bb, Hb, Vb, device=dev), -torch.rand(3, Bb, Hb, Kb, device=dev) * 2, torch.rand(3, Bb, Hb, device=dev)
    flat = lambda x: x.reshape(3, Bb * Hb, x.shape[-1]) if x.dim() == 4 else x.reshape(3, Bb * Hb)
    Sref, oref = recurrence_f64(S0b.reshape(Bb * Hb, Kb, Vb), flat(qb), flat(kb), flat(vb), flat(gb), flat(bb), Kb ** -0.5, fl & 1)
    Sb, ob, otb = S0b.clone(), torch.empty(3, Bb, Hb, Vb, device=dev), torch.empty(Bb, Hb, Vb, device=dev)
    for i in range(3):
        step(Sb, qb[i].contiguous(), kb[i].contiguous(), vb[i].contiguous(), gb[i].contiguous(), bb[i].contiguous(), otb, Kb ** -0.5, fl)
        ob[i] = otb
    torch.cuda.synchronize()
    eo, es = rel(flat(ob), oref), rel(Sb.reshape(Bb * Hb, Kb, Vb), Sref)
    worst = max(worst, eo, es)
    results["batched"].append({"B": Bb, "H": Hb, "K": Kb, "V": Vb, "flags": fl, "tokens": 3, "relErrO": eo, "relErrState": es})
    print(f"batched step B={Bb:2d} H={Hb:2d} K={Kb} V={Vb} flags {fl}: o {eo:.2e}  state {es:.2e}  {'ok' if max(eo, es) < 1e-5 else 'FAIL'}")
cudabench.finish_checks(results, worst, check_only)


def graph_time(fn, reps=50, iters=20):
    return cudabench.graph_time(fn, reps, iters, warmup=3)


# the card's bandwidth (bytes read + written), in a graph: cudaMemcpy (torch's copy_) and a plain
# 16-byte copy kernel (bench/copy_probe.cu), on 1 GiB and on a buffer of the batch-16 state's size
# (32 MiB read, 32 MiB written); the best of them is the ceiling the steps are held to
results["copy"] = []
for nbytes in (1 << 30, 1 << 25):
    src = torch.randn(nbytes // 4, device=dev)
    dst, sink = torch.empty_like(src), torch.zeros(4, device=dev)
    reps = 5 if nbytes > (1 << 28) else 64
    row = {"bytes": nbytes, "cudaMemcpyTBs": 2 * nbytes / (graph_time(lambda: dst.copy_(src), reps=10, iters=reps) * 1e-6) / 1e12}
    if probe is not None:
        st = lambda: torch.cuda.current_stream().cuda_stream
        tc = graph_time(lambda: probe.probe_copy(src.data_ptr(), dst.data_ptr(), src.numel(), st()), reps=10, iters=reps)
        tr = graph_time(lambda: probe.probe_read(src.data_ptr(), sink.data_ptr(), src.numel(), st()), reps=10, iters=reps)
        row.update({"copyKernelTBs": 2 * nbytes / (tc * 1e-6) / 1e12, "readKernelTBs": nbytes / (tr * 1e-6) / 1e12})
    results["copy"].append(row)
    print("bandwidth, " + f"{nbytes >> 20} MiB: " + ", ".join(f"{k_} {v_:.2f}" for k_, v_ in row.items() if k_ != "bytes"))
    del src, dst
copy_tbs = max(max(v_ for k_, v_ in r.items() if k_ in ("cudaMemcpyTBs", "copyKernelTBs")) for r in results["copy"])
results["copyTBs"] = copy_tbs
print(f"copy ceiling: {copy_tbs:.2f} TB/s")

fla_step = None
if fla_path:
    import types
    sys.path.insert(0, fla_path)
    pkg = types.ModuleType("fla")
    pkg.__path__ = [os.path.join(fla_path, "fla")]
    sys.modules["fla"] = pkg
    from fla.ops.kda import fused_recurrent_kda as fla_step

H, K, V = 32, 128, 128
L2 = torch.cuda.get_device_properties(0).L2_cache_size
results["l2Bytes"] = L2
for B in (1, 16, 64, 128):
    # several copies of the state, cycled within the graph, so that the states touched exceed
    # twice the L2 and each step streams from HBM as a model's layers would
    one = B * H * K * V * 4
    n = cudabench.copies_past_l2(one)
    S = [torch.randn(B, H, K, V, device=dev) * 0.01 for _ in range(n)]
    q, k, v, g, beta, o = cudabench.kda_inputs((B, H), K, V)
    def run_ours(flags):
        def f():
            for s_ in S:
                step(s_, q, k, v, g, beta, o, K ** -0.5, flags)
        return f
    ours = graph_time(run_ours(0), iters=max(1, 64 // n)) / n
    ours_ov = graph_time(run_ours(2), iters=max(1, 64 // n)) / n  # KLE_CUDA_KDA_OVERLAP
    state_bytes = 2 * one
    row = {"B": B, "H": H, "K": K, "V": V, "stateCopies": n, "oursUs": ours, "oursTBs": state_bytes / (ours * 1e-6) / 1e12,
           "oursOverlapUs": ours_ov, "oursOverlapTBs": state_bytes / (ours_ov * 1e-6) / 1e12}
    if fla_step is not None:
        q4, k4, v4, g4, b4 = (x.unsqueeze(1).contiguous() for x in (q, k, v, g, beta))
        def run_fla():
            for s_ in S:
                fla_step(q=q4, k=k4, v=v4, g=g4, beta=b4, scale=K ** -0.5, initial_state=s_, output_final_state=True, use_qk_l2norm_in_kernel=False)
        try:
            t_fla = graph_time(run_fla, iters=max(1, 64 // n)) / n
            row.update({"flaUs": t_fla, "flaTBs": state_bytes / (t_fla * 1e-6) / 1e12})
        except Exception as e:  # report, do not hide
            row["flaError"] = repr(e)[:300]
    results["timing"].append(row)
    extra = f"  fla {row['flaUs']:.2f} us ({row['flaTBs']:.2f} TB/s)" if "flaUs" in row else (f"  fla failed: {row.get('flaError')}" if "flaError" in row else "")
    print(f"B={B:4d} H={H} K=V={K} ({n} state copies): ours {ours:.2f} us/step ({row['oursTBs']:.2f} TB/s of state traffic), "
          f"overlapped launch {ours_ov:.2f} us ({row['oursOverlapTBs']:.2f} TB/s){extra}")

# prefill of one sequence at 48B shape: our token-by-token kernel (state on chip for the whole
# call) against fla's chunk_kda, both in graphs; Mtok/s per layer
chunk_kda = None
if fla_path:
    try:
        from fla.ops.kda import chunk_kda
    except Exception as e:
        results["chunkImportError"] = repr(e)[:300]
results["prefill"] = []
for T in (16384, 65536, 262144):
    q, k, v, g, beta, o = cudabench.kda_inputs((T, H), K, V)
    S0 = torch.zeros(H, K, V, device=dev)
    ours = graph_time(lambda: recurrent(S0, q, k, v, g, beta, o, K ** -0.5), reps=3, iters=1)
    ws = chunk_ws(T, H, K, V)
    ours_c = graph_time(lambda: chunked(S0, q, k, v, g, beta, o, K ** -0.5, 0, ws), reps=5, iters=1)
    del ws
    torch.cuda.empty_cache()
    row = {"T": T, "oursMs": ours / 1000, "oursMtokS": T / ours, "oursChunkMs": ours_c / 1000, "oursChunkMtokS": T / ours_c}
    if chunk_kda is not None:
        q4, k4, v4, g4, b4 = (x.unsqueeze(0).contiguous() for x in (q, k, v, g, beta))
        try:
            t_c = graph_time(lambda: chunk_kda(q=q4, k=k4, v=v4, g=g4, beta=b4, scale=K ** -0.5, initial_state=S0.unsqueeze(0), output_final_state=True), reps=3, iters=1)
            row.update({"flaChunkMs": t_c / 1000, "flaChunkMtokS": T / t_c, "chunkVsFla": t_c / ours_c})
        except Exception as e:
            row["flaError"] = repr(e)[:300]
    results["prefill"].append(row)
    extra = f", fla chunk_kda {row['flaChunkMs']:.2f} ms ({row['flaChunkMtokS']:.2f} Mtok/s), chunked/fla {row['chunkVsFla']:.2f}x" if "flaChunkMs" in row else (f", fla failed: {row.get('flaError')}" if "flaError" in row else "")
    print(f"prefill T={T} H={H} K=V={K}: ours token-by-token {row['oursMs']:.2f} ms ({row['oursMtokS']:.2f} Mtok/s), chunked {row['oursChunkMs']:.2f} ms ({row['oursChunkMtokS']:.2f} Mtok/s){extra}")
    del q, k, v, g, beta, o
if out_path:
    with open(out_path, "w") as fh:
        json.dump(results, fh, indent=1)
