"""Step 3 of the recipe: held-out loss and perplexity of a checkpoint (state.pt or an exported
directory) under the protocol `kimi-edge eval` uses (common.EVAL_CTX windows), in float32 with
TF32 off, plus a smoothed bigram baseline on the same tokens.

    python3 train/evaluate.py models/default [--json out.json]
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
from common import DATA, EVAL_CTX, eval_windows, heldout_loss, load_checkpoint, tokens  # noqa: E402


def bigram_loss(train: np.ndarray, held: np.ndarray, vocab: int) -> dict:
    """Interpolated bigram (Jelinek-Mercer with a unigram, add-one smoothed), the interpolation
    weight chosen on the first half of the held-out windows and scored on all of them, the
    same targets the model is scored on."""
    big = np.zeros((vocab, vocab), dtype=np.float64)
    np.add.at(big, (train[:-1], train[1:]), 1)
    uni = (np.bincount(train, minlength=vocab) + 1.0) / (len(train) + vocab)
    row = big.sum(1, keepdims=True)
    cond = np.divide(big, row, out=np.zeros_like(big), where=row > 0)
    w = eval_windows(held).numpy()
    prev, nxt = w[:, :-1].reshape(-1), w[:, 1:].reshape(-1)
    best = None
    for lam in [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95]:
        p = lam * cond[prev, nxt] + (1 - lam) * uni[nxt]
        nll = -np.log(p[: len(p) // 2]).mean()
        if best is None or nll < best[1]:
            best = (lam, nll)
    lam = best[0]
    nll = float(-np.log(lam * cond[prev, nxt] + (1 - lam) * uni[nxt]).mean())
    return {"lambda": lam, "loss": nll, "ppl": math.exp(nll)}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_checkpoint(a.checkpoint, dev)
    held, train = tokens("heldout", a.data), tokens("train", a.data)
    n_windows = len(eval_windows(held))
    loss = heldout_loss(model, held, dev)
    first16 = heldout_loss(model, held, dev, max_windows=16)
    out = {
        "checkpoint": a.checkpoint, "protocol": f"{n_windows} windows of {EVAL_CTX}+1 tokens, overlapping by one, empty state each",
        "scored_tokens": n_windows * EVAL_CTX, "loss": loss, "ppl": math.exp(loss), "loss_first16": first16,
        "bigram": bigram_loss(train, held, model.config.vocab_size),
        "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", "torch": torch.__version__,
    }
    print(json.dumps(out, indent=1))
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
