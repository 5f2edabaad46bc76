"""Step 4 of the recipe: a trained state.pt as a checkpoint the engine loads unchanged.

    python3 train/export.py runs/default/state.pt --out models/default [--dtype bf16|f32]

Writes config.json, model.safetensors, tokenizer.json and tokenizer_config.json (from the
prepared data), and reference.safetensors: a PyTorch forward of the exported weights (as written,
rounding included) in float64 over fixed held-out tokens, every position's logits -- what the
engine's tests compare against.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DATA, load_checkpoint, read_safetensors, tokens, write_safetensors  # noqa: E402
from kimi_linear import Config, KimiLinear  # noqa: E402

REFERENCE_TOKENS = 96


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("state")
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    a = ap.parse_args(argv)
    model = load_checkpoint(a.state)
    cfg = model.config
    os.makedirs(a.out, exist_ok=True)
    dt = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    # vectors (norms, gate parameters, router) stay f32 as the engine keeps them
    sd = {k: (v.to(dt) if v.dim() >= 2 and not k.endswith("gate.weight") and "conv1d" not in k else v.float()) for k, v in model.hf_state_dict().items()}
    hf = cfg.hf()
    hf["dtype"] = "bfloat16" if a.dtype == "bf16" else "float32"
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
        f.write("\n")
    write_safetensors(os.path.join(a.out, "model.safetensors"), sd, {"format": "pt"})
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(a.data, name), os.path.join(a.out, name))

    # the reference: the weights as written, read back, in float64
    ref = KimiLinear(Config.from_hf(hf)).double()
    ref.load_hf_state_dict({k: v.double() for k, v in read_safetensors(os.path.join(a.out, "model.safetensors")).items()})
    ids = torch.from_numpy(tokens("heldout", a.data)[:REFERENCE_TOKENS]).unsqueeze(0)
    with torch.no_grad():
        logits = ref(ids, recurrent=True)[0]
    write_safetensors(os.path.join(a.out, "reference.safetensors"),
                      {"tokens": ids[0].to(torch.int32).float(), "logits": logits.float()},
                      {"what": "float64 PyTorch forward (train/kimi_linear.py, per-token recurrence) of model.safetensors"})
    print(f"wrote {a.out}: {sum(v.numel() for v in sd.values())} parameters as {a.dtype}, reference over {REFERENCE_TOKENS} tokens")


if __name__ == "__main__":
    main()
