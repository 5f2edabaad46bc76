# What the CUDA benches share: the end of their correctness checks, timing inputs, and timing by
# CUDA-graph replay, so host launch overhead is not measured.
import sys

import torch

BAR = 1e-5  # relative error, float32 kernels against their references (the CPU kernels' bar)


def finish_checks(results, worst, check_only):
    """record and print the worst error; with --check-only, exit now, failing above the bar"""
    results["worstRelErr"] = worst
    print(f"worst relative error {worst:.2e} (bar 1e-5)")
    if check_only:
        sys.exit(0 if worst < BAR else 1)


def copies_past_l2(one_bytes):
    """how many copies of a state of one_bytes, cycled within a graph, touch more than twice the
    L2, so that each use streams from HBM as a model's layers do"""
    L2 = torch.cuda.get_device_properties(0).L2_cache_size
    return max(1, -(-2 * L2 // one_bytes))


def kda_inputs(lead, K, V):
    """random KDA inputs for timing, shaped lead + (K,) / lead + (V,) / lead (beta): unit-norm q
    and k, mild decays, and an output buffer; lead is (B, H) for a step, (T, H) for a prefill"""
    q = torch.nn.functional.normalize(torch.randn(*lead, K, device="cuda"), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(*lead, K, device="cuda"), dim=-1)
    v = torch.randn(*lead, V, device="cuda")
    g = -torch.rand(*lead, K, device="cuda") * 0.1
    beta = torch.rand(*lead, device="cuda")
    return q, k, v, g, beta, torch.empty(*lead, V, device="cuda")


def graph_time(fn, reps, iters, warmup):
    """median microseconds per fn() call, replayed inside one CUDA graph of `iters` calls"""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(iters):
            fn()
    g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) * 1e3 / iters)
    ts.sort()
    return ts[len(ts) // 2]
