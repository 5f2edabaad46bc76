"""Step 2 of the recipe: train one model on the prepared tokens.

    python3 train/train.py --preset default --tokens 20e6 --out runs/default

Writes <out>/state.pt (the weights in the HF checkpoint's names, and the config) and
<out>/log.json (the loss curve, held-out loss at intervals, parameters, tokens seen, FLOPs,
wall time, hardware). Runs on CUDA when there is a GPU (bf16 autocast), else on the CPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DATA, heldout_loss, preset, tokens  # noqa: E402
from kimi_linear import KimiLinear, count_params, flops_per_token  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="default")
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--tokens", type=float, default=20e6, help="training tokens (the compute budget)")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--warmup", type=float, default=0.03, help="fraction of steps")
    ap.add_argument("--bias-rate", type=float, default=1e-3, help="MoE selection-bias update per step")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-windows", type=int, default=256)
    ap.add_argument("--max-seconds", type=float, default=540)
    ap.add_argument("--final-windows", type=int, default=None, help="held-out windows scored at the end (default: all)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    torch.manual_seed(a.seed)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    meta = json.load(open(os.path.join(a.data, "meta.json")))
    train_ids, held_ids = tokens("train", a.data), tokens("heldout", a.data)
    cfg = preset(a.preset, meta["vocab_size"])
    model = KimiLinear(cfg).to(dev)
    params = count_params(model)
    fpt = flops_per_token(model, a.ctx)
    step_tokens = a.batch * a.ctx
    steps = max(1, int(a.tokens // step_tokens))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "conv1d" not in n and not n.endswith("gate.weight")]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "conv1d" not in n and not n.endswith("gate.weight"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    warm = max(1, int(a.warmup * steps))
    lr_at = lambda s: a.lr * (s + 1) / warm if s < warm else a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    rng = np.random.default_rng(a.seed)
    amp = dev == "cuda"
    log = {"preset": a.preset, "arch": a.preset.split("-")[0] if "-" in a.preset else "kimi", "config": asdict(cfg),
           "params": params, "flops_per_token": fpt, "ctx": a.ctx, "batch": a.batch, "lr": a.lr, "steps_planned": steps,
           "train_tokens_available": int(len(train_ids)), "device": torch.cuda.get_device_name(0) if dev == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "curve": [], "heldout": []}
    t0 = time.time()
    step = 0
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        starts = rng.integers(0, len(train_ids) - a.ctx - 1, a.batch)
        x = torch.from_numpy(np.stack([train_ids[s : s + a.ctx + 1] for s in starts])).to(dev)
        with torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=amp):
            logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, cfg.vocab_size), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for m in model.moe_layers():
                load = m.last_load
                m.gate.e_score_correction_bias += a.bias_rate * torch.sign(load.mean() - load)
        if step % 10 == 0 or step == steps - 1:
            log["curve"].append({"step": step, "tokens": (step + 1) * step_tokens, "loss": round(loss.item(), 5), "seconds": round(time.time() - t0, 2)})
        if (step % a.eval_every == 0 and step) or step == steps - 1:
            hl = heldout_loss(model, held_ids, dev, max_windows=a.eval_windows, autocast=amp)
            log["heldout"].append({"step": step, "tokens": (step + 1) * step_tokens, "loss": round(hl, 5)})
            print(f"{a.preset} step {step}/{steps} train {loss.item():.4f} heldout {hl:.4f} {time.time() - t0:.0f}s", flush=True)
        if time.time() - t0 > a.max_seconds:
            print(f"{a.preset}: stopped at the time limit after {step + 1} steps", flush=True)
            break
    seen = (step + 1) * step_tokens
    full = heldout_loss(model, held_ids, dev, max_windows=a.final_windows, autocast=False)
    log.update({"steps": step + 1, "tokens_seen": seen, "epochs": seen / len(train_ids), "flops": fpt * seen,
                "flops_6nd": 6 * params["active_compute"] * seen, "wall_seconds": round(time.time() - t0, 1),
                "heldout_loss": full, "heldout_ppl": math.exp(full),
                "moe_load": [m.last_load.tolist() for m in model.moe_layers()] if model.moe_layers() and model.moe_layers()[0].last_load is not None else []})
    os.makedirs(a.out, exist_ok=True)
    torch.save({"config": asdict(cfg), "state": {k: v.cpu() for k, v in model.hf_state_dict().items()}}, os.path.join(a.out, "state.pt"))
    json.dump(log, open(os.path.join(a.out, "log.json"), "w"), indent=1)
    print(f"{a.preset}: {seen / 1e6:.1f}M tokens, held-out loss {full:.4f} (ppl {math.exp(full):.2f}), {log['wall_seconds']}s", flush=True)


if __name__ == "__main__":
    main()
