"""A learned token-importance head for the bounded MLA cache (docs/kv-budget.md), DynTS's idea fit
by distillation: run the trained model with its full cache over long training windows, record each
MLA layer's input h_j for every token j and how much attention the token gets later from queries
past the recent window, and fit a linear head to predict it (ridge regression, closed form). The
engine then scores a row once, w . h_j, when its token arrives (policy 'learned').

Target for token j: log of the mean over heads and over queries t >= j + gap of p[h, t, j] * (t + 1)
(the attention relative to a uniform one over the t + 1 rows a query sees, so early and late
queries weigh alike). Tokens without such queries (the window's tail) are not fit.

    python3 train/kv_importance.py [--checkpoint train/checkpoints/default/model-f32.safetensors]
        [--windows 48 --length 1024 --gap 32] [--out train/checkpoints/default/kv-importance.safetensors]

Writes the head (model.layers.N.self_attn.kv_importance.weight, [1, hidden], f32, one per MLA
layer) and a JSON report beside it: the fit's R^2 and rank correlation on held-out windows.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DATA, read_safetensors, tokens, write_safetensors  # noqa: E402
from kimi_linear import MLA, Config, KimiLinear, rms_norm  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def load(checkpoint: str, config_dir: str) -> KimiLinear:
    cfg = Config.from_hf(json.load(open(os.path.join(config_dir, "config.json"))))
    m = KimiLinear(cfg)
    m.load_hf_state_dict(read_safetensors(checkpoint))
    return m.eval()


def capture(model: KimiLinear, ids: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per MLA layer: its input h [T, D] and attention probabilities [H, T, T] for one window."""
    got: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for i, layer in enumerate(model.layers):
        a = layer.self_attn
        if not isinstance(a, MLA):
            continue

        def hooked(h, recurrent=False, a=a, i=i):
            B, T, _ = h.shape
            Hm, dn, dr = a.Hm, a.nope, a.rope
            q = a.q_proj(h).view(B, T, Hm, dn + dr).transpose(1, 2)
            kv = a.kv_a_proj_with_mqa(h)
            c = rms_norm(kv[..., : a.R], a.kv_a_layernorm, a.eps)
            kvb = a.kv_b_proj(c).view(B, T, Hm, dn + a.vh).transpose(1, 2)
            k = torch.cat([kvb[..., :dn], kv[..., a.R:].unsqueeze(1).expand(B, Hm, T, dr)], -1)
            v = kvb[..., dn:]
            s = (q @ k.transpose(-1, -2)) / math.sqrt(dn + dr)
            s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
            p = s.softmax(-1)
            got[i] = (h[0].detach(), p[0].detach())
            return a.o_proj((p @ v).transpose(1, 2).reshape(B, T, Hm * a.vh))

        # the layer's own forward, with the probabilities kept: checked equal below

        a.forward = hooked
    with torch.no_grad():
        model(ids[None])
    return got


def check_hook(model: KimiLinear, ids: torch.Tensor) -> float:
    """The hooked model's logits against the plain one's (the hook must not change the model)."""
    plain = KimiLinear(model.config)
    plain.load_hf_state_dict(model.hf_state_dict())
    with torch.no_grad():
        want = plain.eval()(ids[None])
        capture(model, ids)
        got = model(ids[None])
    return float((got - want).abs().max())


def targets(p: torch.Tensor, gap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per key j: log mean over heads and queries t >= j + gap of p[h, t, j] * (t + 1); mask of fit keys."""
    H, T, _ = p.shape
    rel = p.mean(0) * torch.arange(1, T + 1, dtype=p.dtype)[:, None]  # [t, j]
    t = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    later = (t >= j + gap).to(p.dtype)
    n = later.sum(0)
    mean = (rel * later).sum(0) / n.clamp(min=1)
    return torch.log(mean + 1e-6), n > 0


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = a.argsort().argsort().astype(np.float64), b.argsort().argsort().astype(np.float64)
    ra -= ra.mean()
    rb -= rb.mean()
    return float((ra * rb).sum() / math.sqrt((ra * ra).sum() * (rb * rb).sum()))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=os.path.join(HERE, "checkpoints", "default", "model-f32.safetensors"))
    ap.add_argument("--config", default=os.path.join(HERE, "..", "models", "default"))
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--windows", type=int, default=48)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--gap", type=int, default=32)
    ap.add_argument("--ridge", type=float, default=1e-2)
    ap.add_argument("--out", default=os.path.join(HERE, "checkpoints", "default", "kv-importance.safetensors"))
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    model = load(a.checkpoint, a.config)
    train_ids, held_ids = tokens("train", a.data), tokens("heldout", a.data)
    rng = np.random.default_rng(0)

    def collect(ids: np.ndarray, n: int) -> dict[int, tuple[list, list]]:
        out: dict[int, tuple[list, list]] = {}
        for start in rng.integers(0, len(ids) - a.length - 1, size=n):
            got = capture(model, torch.from_numpy(ids[start : start + a.length].copy()))
            for layer, (h, p) in got.items():
                y, ok = targets(p, a.gap)
                xs, ys = out.setdefault(layer, ([], []))
                xs.append(h[ok].double().numpy())
                ys.append(y[ok].double().numpy())
        return out

    err = check_hook(model, torch.from_numpy(train_ids[: a.length].copy()))
    print(f"hooked vs plain model: max logit difference {err:.2e}")
    assert err < 1e-4, "the capturing forward does not compute the model's MLA"
    fit, check = collect(train_ids, a.windows), collect(held_ids, max(4, a.windows // 4))
    heads, report = {}, {"hook_max_logit_diff": err, "windows": a.windows, "length": a.length, "gap": a.gap, "ridge": a.ridge, "layers": {}}
    for layer, (xs, ys) in fit.items():
        X, y = np.concatenate(xs), np.concatenate(ys)
        mx, my = X.mean(0), y.mean()
        Xc = X - mx
        w = np.linalg.solve(Xc.T @ Xc + a.ridge * len(X) * np.eye(X.shape[1]), Xc.T @ (y - my))
        Xh, yh = np.concatenate(check[layer][0]), np.concatenate(check[layer][1])
        pred = (Xh - mx) @ w + my
        r2 = 1 - ((yh - pred) ** 2).sum() / ((yh - yh.mean()) ** 2).sum()
        heads[f"model.layers.{layer}.self_attn.kv_importance.weight"] = torch.from_numpy(w).float().reshape(1, -1)
        report["layers"][layer] = {"fit_tokens": len(X), "heldout_tokens": len(Xh), "heldout_r2": float(r2), "heldout_spearman": spearman(pred, yh)}
        print(f"layer {layer}: {len(X)} tokens fit, held-out R^2 {r2:.3f}, rank correlation {report['layers'][layer]['heldout_spearman']:.3f}")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    write_safetensors(a.out, heads, {"what": "kimi-linear-edge kv importance head (docs/kv-budget.md)"})
    with open(a.out.replace(".safetensors", ".json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
