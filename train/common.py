"""What the recipe's steps share: the prepared token files, the held-out evaluation, presets,
and reading and writing safetensors (a JSON header and raw little-endian tensors, written here so
the recipe needs nothing beyond PyTorch and NumPy)."""
from __future__ import annotations

import json
import math
import os
import struct

import numpy as np
import torch

from kimi_linear import Config, KimiLinear

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")

# The held-out protocol, shared with `kimi-edge eval`: the held-out stream cut into windows of
# EVAL_CTX + 1 tokens that overlap by one; each window runs from an empty state and scores its
# last EVAL_CTX tokens; the mean negative log-likelihood in nats per token over all windows.
EVAL_CTX = 256


def tokens(split: str, data: str = DATA) -> np.ndarray:
    return np.fromfile(os.path.join(data, f"{split}.u16"), dtype="<u2").astype(np.int64)


def eval_windows(ids: np.ndarray, ctx: int = EVAL_CTX) -> torch.Tensor:
    n = (len(ids) - 1) // ctx
    return torch.from_numpy(np.stack([ids[i * ctx : i * ctx + ctx + 1] for i in range(n)]))


@torch.no_grad()
def heldout_loss(model: KimiLinear, ids: np.ndarray, device: str, batch: int = 64, max_windows: int | None = None, autocast: bool = False) -> float:
    w = eval_windows(ids)
    if max_windows:
        w = w[:max_windows]
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(w), batch):
        x = w[i : i + batch].to(device)
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=autocast):
            logits = model(x[:, :-1])
        nll = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
        total += nll.item()
        count += x[:, 1:].numel()
    model.train()
    return total / count


# ----------------------------------------------------------------- model presets

def preset(name: str, vocab: int) -> Config:
    """`default`: the embedded model (3 KDA : 1 MLA, MoE, tied embeddings, about 1M parameters,
    2 MB in BF16). `<arch>-<size>` (arch kimi | gdnh | mla, size 1-5): the scaling sweep's models,
    matched in parameters across architectures at each size."""
    if name == "default":
        return Config(vocab_size=vocab)
    arch, size = name.split("-")
    D = {1: 64, 2: 96, 3: 128, 4: 192, 5: 256}[int(size)]
    L = 4
    c = Config(vocab_size=vocab, hidden_size=D, num_hidden_layers=L, num_heads=D // 64 if D >= 128 else 1,
               head_dim=64 if D >= 128 else D, num_attention_heads=max(1, D // 32), qk_nope_head_dim=32,
               qk_rope_head_dim=16, v_head_dim=32, kv_lora_rank=D // 2, intermediate_size=2 * D,
               moe_intermediate_size=D // 4, num_experts=8, num_experts_per_token=2)
    if arch == "kimi":
        return c
    if arch == "gdnh":
        c.gate_type = "head"
        return c
    if arch == "mla":
        # every layer MLA, heads widened until the mixer's parameters match a linear layer's
        c.kda_layers, c.full_attn_layers = [], list(range(1, L + 1))
        c.num_attention_heads = max(1, round(_kda_mixer_params(c) / _mla_head_params(c)))
        return c
    raise ValueError(f"unknown preset {name}")


def _kda_mixer_params(c: Config) -> float:
    D, HK, K = c.hidden_size, c.num_heads * c.head_dim, c.head_dim
    return 4 * D * HK + 3 * HK * c.short_conv_kernel_size + 2 * D * K + 2 * K * HK + D * c.num_heads


def _mla_head_params(c: Config) -> float:
    D, dn, dr, dv, R = c.hidden_size, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim, c.kv_lora_rank
    return D * (dn + dr) + R * (dn + dv) + D * dv


# ----------------------------------------------------------------- safetensors

_DT = {torch.float32: ("F32", 4), torch.bfloat16: ("BF16", 2), torch.float16: ("F16", 2)}


def write_safetensors(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    header: dict = {"__metadata__": metadata or {}}
    blobs, off = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        dt, size = _DT[t.dtype]
        # x86 and Arm hosts are little-endian, as safetensors is
        raw = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((-len(h)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        raw = data[base + a : base + b]
        if e["dtype"] == "BF16":
            t = torch.from_numpy(np.frombuffer(raw, dtype="<i2").copy()).view(torch.bfloat16)
        else:
            t = torch.from_numpy(np.frombuffer(raw, dtype={"F32": "<f4", "F16": "<f2"}[e["dtype"]]).copy())
        out[name] = t.reshape(e["shape"])
    return out


def load_checkpoint(path: str, device: str = "cpu") -> KimiLinear:
    """A model from the trainer's state.pt or an exported HF directory."""
    if os.path.isdir(path):
        cfg = Config.from_hf(json.load(open(os.path.join(path, "config.json"))))
        sd = read_safetensors(os.path.join(path, "model.safetensors"))
    else:
        ck = torch.load(path, map_location="cpu")
        cfg, sd = Config(**ck["config"]), ck["state"]
    m = KimiLinear(cfg)
    m.load_hf_state_dict(sd)
    return m.to(device)


def ppl(nats: float) -> float:
    return math.exp(nats)
