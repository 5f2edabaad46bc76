"""Kimi Linear in PyTorch, for training: the model docs/model.md describes, written so its
parameters are the HF checkpoint's tensors one for one (names, shapes, layouts), and the engine
loads what `export.py` writes without conversion.

Three mixers share one model: KDA (one decay per key channel), GDN-H's gate (one decay per head,
the same recurrence; `linear_attn_config.gate_type = "head"`) and MLA. An all-MLA stack (the
`mla` architecture of the scaling sweep) is a baseline that only PyTorch runs: the engine needs at
least one linear layer to call a model Kimi Linear.

The linear-attention recurrence has two implementations: `delta_rule_recurrent`, the plain
per-token loop (the reference), and `delta_rule_chunked`, the same result with the tokens of a
chunk folded into one triangular solve (what training uses). A test in `test_kimi_linear.py`
holds them together.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    vocab_size: int = 2048
    hidden_size: int = 128
    num_hidden_layers: int = 4
    # 1-based layer ids, as linear_attn_config lists them
    kda_layers: list[int] = field(default_factory=lambda: [1, 2, 3])
    full_attn_layers: list[int] = field(default_factory=lambda: [4])
    gate_type: str = "channel"  # "channel" (KDA) or "head" (GDN-H)
    num_heads: int = 2  # linear attention heads
    head_dim: int = 64
    short_conv_kernel_size: int = 4
    num_attention_heads: int = 2  # MLA heads
    qk_nope_head_dim: int = 32
    qk_rope_head_dim: int = 16
    v_head_dim: int = 32
    kv_lora_rank: int = 64
    intermediate_size: int = 256
    num_experts: int = 8
    num_experts_per_token: int = 2
    num_shared_experts: int = 1
    moe_intermediate_size: int = 32
    first_k_dense_replace: int = 1
    routed_scaling_factor: float = 2.446
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    bos_token_id: int = 256
    eos_token_id: int = 257
    pad_token_id: int = 258
    model_max_length: int = 1048576

    def hf(self) -> dict:
        """config.json as the engine (and HF's KimiLinearForCausalLM) reads it."""
        lac = {
            "kda_layers": self.kda_layers,
            "full_attn_layers": self.full_attn_layers,
            "num_heads": self.num_heads,
            "head_dim": self.head_dim,
            "short_conv_kernel_size": self.short_conv_kernel_size,
        }
        if self.gate_type != "channel":
            lac["gate_type"] = self.gate_type
        return {
            "architectures": ["KimiLinearForCausalLM"],
            "model_type": "kimi_linear",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_attention_heads,
            "head_dim": self.qk_nope_head_dim + self.qk_rope_head_dim,
            "kv_lora_rank": self.kv_lora_rank,
            "q_lora_rank": None,
            "qk_nope_head_dim": self.qk_nope_head_dim,
            "qk_rope_head_dim": self.qk_rope_head_dim,
            "v_head_dim": self.v_head_dim,
            "mla_use_nope": True,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": 10000,
            "rope_scaling": None,
            "tie_word_embeddings": self.tie_word_embeddings,
            "linear_attn_config": lac,
            "num_experts": self.num_experts,
            "num_experts_per_token": self.num_experts_per_token,
            "num_shared_experts": self.num_shared_experts,
            "moe_intermediate_size": self.moe_intermediate_size,
            "first_k_dense_replace": self.first_k_dense_replace,
            "moe_layer_freq": 1,
            "moe_renormalize": True,
            "moe_router_activation_func": "sigmoid",
            "routed_scaling_factor": self.routed_scaling_factor,
            "use_grouped_topk": True,
            "num_expert_group": 1,
            "topk_group": 1,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "model_max_length": self.model_max_length,
            "dtype": "bfloat16",
        }

    @staticmethod
    def from_hf(o: dict) -> "Config":
        lac = o["linear_attn_config"]
        return Config(
            vocab_size=o["vocab_size"], hidden_size=o["hidden_size"], num_hidden_layers=o["num_hidden_layers"],
            kda_layers=list(lac["kda_layers"]), full_attn_layers=list(lac["full_attn_layers"]),
            gate_type=lac.get("gate_type", "channel"), num_heads=lac["num_heads"], head_dim=lac["head_dim"],
            short_conv_kernel_size=lac["short_conv_kernel_size"], num_attention_heads=o["num_attention_heads"],
            qk_nope_head_dim=o["qk_nope_head_dim"], qk_rope_head_dim=o["qk_rope_head_dim"], v_head_dim=o["v_head_dim"],
            kv_lora_rank=o["kv_lora_rank"], intermediate_size=o["intermediate_size"], num_experts=o["num_experts"],
            num_experts_per_token=o["num_experts_per_token"], num_shared_experts=o["num_shared_experts"],
            moe_intermediate_size=o["moe_intermediate_size"], first_k_dense_replace=o["first_k_dense_replace"],
            routed_scaling_factor=o["routed_scaling_factor"], rms_norm_eps=o["rms_norm_eps"],
            tie_word_embeddings=o.get("tie_word_embeddings", False), bos_token_id=o.get("bos_token_id", 256),
            eos_token_id=o.get("eos_token_id", 257), pad_token_id=o.get("pad_token_id", 258),
        )


def hi(x: torch.Tensor) -> torch.Tensor:
    """At least float32: the recurrence, norms and routing never run in 16-bit."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)


# ----------------------------------------------------------------- the delta rule with decay

def delta_rule_recurrent(q, k, v, g, beta, S0=None):
    """The reference: per token, S <- Diag(exp g) S; u = v - S^T k; S <- S + beta k u^T; o = S^T q.
    q, k, g: [B, H, T, K] (q already scaled), v: [B, H, T, V], beta: [B, H, T]. Returns o, S."""
    B, H, T, K = k.shape
    S = torch.zeros(B, H, K, v.shape[-1], dtype=torch.float32, device=k.device) if S0 is None else S0
    out = []
    for t in range(T):
        S = S * g[:, :, t].exp().unsqueeze(-1)
        u = v[:, :, t] - torch.einsum("bhkv,bhk->bhv", S, k[:, :, t])
        S = S + beta[:, :, t, None, None] * k[:, :, t].unsqueeze(-1) * u.unsqueeze(-2)
        out.append(torch.einsum("bhkv,bhk->bhv", S, q[:, :, t]))
    return torch.stack(out, 2), S


def delta_rule_chunked(q, k, v, g, beta, chunk: int = 32, S0=None):
    """The same as delta_rule_recurrent, `chunk` tokens at a time. Within a chunk, with G the
    running sum of g, token i's correction u_i satisfies u_i + sum_{j<i} A_ij u_j = v_i -
    S0^T (e^{G_i} * k_i), A_ij = beta_j sum_c k_i[c] k_j[c] e^{G_i[c] - G_j[c]}: one unit lower
    triangular solve. The decay ratios are formed from differences G_i - G_j <= 0 taken before
    exponentiating (masked above the diagonal), so strong decay cannot overflow."""
    B, H, T, K = k.shape
    V = v.shape[-1]
    pad = (-T) % chunk
    if pad:
        z = lambda x: F.pad(x, (0, 0, 0, pad))
        q, k, v, g = z(q), z(k), z(v), z(g)
        beta = F.pad(beta, (0, pad))
    N = (T + pad) // chunk
    rs = lambda x: x.reshape(B, H, N, chunk, x.shape[-1])
    q, k, v, g = rs(q), rs(k), rs(v), rs(g)
    beta = beta.reshape(B, H, N, chunk)
    G = g.cumsum(-2)
    diff = G.unsqueeze(-2) - G.unsqueeze(-3)  # [B,H,N,i,j,K]: G_i - G_j
    idx = torch.arange(chunk, device=k.device)
    incl = (idx[:, None] >= idx[None, :])
    decay = diff.masked_fill(~incl[..., None], float("-inf")).exp()
    kk = torch.einsum("bhnic,bhnjc,bhnijc->bhnij", k, k, decay) * beta.unsqueeze(-2)
    A = kk.masked_fill(~(idx[:, None] > idx[None, :]), 0.0)
    Bm = torch.einsum("bhnic,bhnjc,bhnijc->bhnij", q, k, decay) * beta.unsqueeze(-2)
    eye = torch.eye(chunk, device=k.device, dtype=k.dtype)
    S = torch.zeros(B, H, K, V, dtype=k.dtype, device=k.device) if S0 is None else S0
    eG = G.exp()
    eLast = G[:, :, :, -1:, :]  # [B,H,N,1,K]
    kw = k * (eLast - G).exp() * beta.unsqueeze(-1)  # k_j e^{G_C - G_j} beta_j
    out = []
    for n in range(N):
        rhs = v[:, :, n] - (eG[:, :, n] * k[:, :, n]) @ S
        U = torch.linalg.solve_triangular(eye + A[:, :, n], rhs, upper=False, unitriangular=True)
        out.append((eG[:, :, n] * q[:, :, n]) @ S + Bm[:, :, n] @ U)
        S = eLast[:, :, n, 0].exp().unsqueeze(-1) * S + kw[:, :, n].transpose(-1, -2) @ U
    o = torch.stack(out, 2).reshape(B, H, N * chunk, V)[:, :, :T]
    return o, S


# ----------------------------------------------------------------- mixers

class LinearAttention(nn.Module):
    """KDA, or with gate_type "head" Gated DeltaNet's one decay per head (docs/model.md section 2)."""

    def __init__(self, c: Config):
        super().__init__()
        D, H, K, W = c.hidden_size, c.num_heads, c.head_dim, c.short_conv_kernel_size
        HK, self.H, self.K, self.eps = H * K, H, K, c.rms_norm_eps
        Kg = 1 if c.gate_type == "head" else K
        self.Kg = Kg
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(D, HK, bias=False) for _ in range(3))
        self.q_conv1d, self.k_conv1d, self.v_conv1d = (nn.Conv1d(HK, HK, W, groups=HK, bias=False) for _ in range(3))
        self.f_a_proj = nn.Linear(D, K, bias=False)
        self.f_b_proj = nn.Linear(K, H * Kg, bias=False)
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1, 16)))
        dt = torch.exp(torch.empty(H * Kg).uniform_(math.log(1e-3), math.log(1e-1)))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.b_proj = nn.Linear(D, H, bias=False)
        self.g_a_proj = nn.Linear(D, K, bias=False)
        self.g_b_proj = nn.Linear(K, HK, bias=False)
        self.o_norm = nn.Parameter(torch.ones(K))
        self.o_proj = nn.Linear(HK, D, bias=False)
        self.W = W

    def conv(self, x, m: nn.Conv1d):
        T = x.shape[1]
        return F.silu(F.conv1d(F.pad(x.transpose(1, 2), (self.W - 1, 0)), m.weight, groups=m.weight.shape[0]).transpose(1, 2)[:, :T])

    def forward(self, h, recurrent: bool = False):
        B, T, _ = h.shape
        H, K = self.H, self.K
        heads = lambda x: hi(x.reshape(B, T, H, -1).transpose(1, 2))
        q = l2_normalize(heads(self.conv(self.q_proj(h), self.q_conv1d))) / math.sqrt(K)
        k = l2_normalize(heads(self.conv(self.k_proj(h), self.k_conv1d)))
        v = heads(self.conv(self.v_proj(h), self.v_conv1d))
        f = hi(self.f_b_proj(self.f_a_proj(h))) + self.dt_bias
        g = -hi(self.A_log).exp().repeat_interleave(self.Kg) * F.softplus(f)
        g = heads(g).expand(B, H, T, K)
        beta = torch.sigmoid(hi(self.b_proj(h))).transpose(1, 2)
        with torch.autocast(device_type=h.device.type, enabled=False):
            o, _ = (delta_rule_recurrent if recurrent else delta_rule_chunked)(q, k, v, g, beta)
        o = o.transpose(1, 2)  # [B, T, H, K]
        gate = torch.sigmoid(hi(self.g_b_proj(self.g_a_proj(h)))).reshape(B, T, H, K)
        o = rms_norm(o, hi(self.o_norm), self.eps) * gate
        return self.o_proj(o.reshape(B, T, H * K).to(h.dtype))


class MLA(nn.Module):
    """Multi-head latent attention without rotary (mla_use_nope), decompressed per head: the
    engine's absorbed form computes the same scores (docs/model.md section 3)."""

    def __init__(self, c: Config):
        super().__init__()
        D, Hm = c.hidden_size, c.num_attention_heads
        self.Hm, self.nope, self.rope, self.vh, self.R, self.eps = Hm, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim, c.kv_lora_rank, c.rms_norm_eps
        self.q_proj = nn.Linear(D, Hm * (self.nope + self.rope), bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(D, self.R + self.rope, bias=False)
        self.kv_a_layernorm = nn.Parameter(torch.ones(self.R))
        self.kv_b_proj = nn.Linear(self.R, Hm * (self.nope + self.vh), bias=False)
        self.o_proj = nn.Linear(Hm * self.vh, D, bias=False)

    def forward(self, h, recurrent: bool = False):
        B, T, _ = h.shape
        Hm, dn, dr = self.Hm, self.nope, self.rope
        q = self.q_proj(h).view(B, T, Hm, dn + dr).transpose(1, 2)
        kv = self.kv_a_proj_with_mqa(h)
        c = rms_norm(hi(kv[..., : self.R]), hi(self.kv_a_layernorm), self.eps).to(h.dtype)
        kvb = self.kv_b_proj(c).view(B, T, Hm, dn + self.vh).transpose(1, 2)
        k = torch.cat([kvb[..., :dn], kv[..., self.R:].unsqueeze(1).expand(B, Hm, T, dr)], -1)
        v = kvb[..., dn:]
        s = hi(q @ k.transpose(-1, -2)) / math.sqrt(dn + dr)
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=h.device).triu(1), float("-inf"))
        o = (s.softmax(-1).to(v.dtype) @ v).transpose(1, 2).reshape(B, T, Hm * self.vh)
        return self.o_proj(o)


# ----------------------------------------------------------------- feed-forward

class SwiGLU(nn.Module):
    def __init__(self, D: int, I: int):
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(D, I, bias=False), nn.Linear(D, I, bias=False)
        self.down_proj = nn.Linear(I, D, bias=False)

    def forward(self, h):
        return self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Expert(nn.Module):
    """A routed expert in Mixtral's names: w1 gate, w2 down, w3 up."""

    def __init__(self, D: int, I: int):
        super().__init__()
        self.w1, self.w3 = nn.Linear(D, I, bias=False), nn.Linear(D, I, bias=False)
        self.w2 = nn.Linear(I, D, bias=False)


class Gate(nn.Module):
    def __init__(self, D: int, E: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(E, D) * D**-0.5)
        # aux-loss-free balancing (DeepSeek-V3, Kimi): nudged after each step, never by gradients
        self.register_buffer("e_score_correction_bias", torch.zeros(E))


class MoE(nn.Module):
    """Sigmoid-scored top-k routing with the selection bias (docs/model.md section 4). Small
    expert counts make running every expert on every token and masking cheaper than gathering."""

    def __init__(self, c: Config):
        super().__init__()
        D, E, I = c.hidden_size, c.num_experts, c.moe_intermediate_size
        self.k, self.scale = c.num_experts_per_token, c.routed_scaling_factor
        self.gate = Gate(D, E)
        self.experts = nn.ModuleList(Expert(D, I) for _ in range(E))
        self.shared_experts = SwiGLU(D, I * c.num_shared_experts)
        self.last_load: torch.Tensor | None = None

    def forward(self, h):
        with torch.autocast(device_type=h.device.type, enabled=False):
            s = torch.sigmoid(hi(h) @ hi(self.gate.weight).t())
        idx = (s + self.gate.e_score_correction_bias).topk(self.k, -1).indices
        w = s.gather(-1, idx)
        w = w / (w.sum(-1, keepdim=True) + 1e-20) * self.scale
        dense_w = torch.zeros_like(s).scatter(-1, idx, w)
        if self.training:
            self.last_load = torch.zeros_like(s).scatter(-1, idx, 1.0).reshape(-1, s.shape[-1]).mean(0).detach()
        W1 = torch.stack([e.w1.weight for e in self.experts])  # [E, I, D]
        W3 = torch.stack([e.w3.weight for e in self.experts])
        W2 = torch.stack([e.w2.weight for e in self.experts])  # [E, D, I]
        a = F.silu(torch.einsum("btd,eid->btei", h, W1)) * torch.einsum("btd,eid->btei", h, W3)
        y = torch.einsum("btei,edi->bted", a * dense_w.to(a.dtype).unsqueeze(-1), W2).sum(2)
        return y + self.shared_experts(h)


class Layer(nn.Module):
    def __init__(self, c: Config, i: int):
        super().__init__()
        self.input_layernorm = nn.Parameter(torch.ones(c.hidden_size))
        self.post_attention_layernorm = nn.Parameter(torch.ones(c.hidden_size))
        self.self_attn = LinearAttention(c) if (i + 1) in c.kda_layers else MLA(c)
        if i < c.first_k_dense_replace or c.num_experts == 0:
            self.mlp = SwiGLU(c.hidden_size, c.intermediate_size)
        else:
            self.block_sparse_moe = MoE(c)
        self.eps = c.rms_norm_eps

    def forward(self, x, recurrent: bool = False):
        x = x + self.self_attn(rms_norm(x, self.input_layernorm, self.eps), recurrent)
        h = rms_norm(x, self.post_attention_layernorm, self.eps)
        return x + (self.mlp(h) if hasattr(self, "mlp") else self.block_sparse_moe(h))


class KimiLinear(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.config = c
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(Layer(c, i) for i in range(c.num_hidden_layers))
        self.norm = nn.Parameter(torch.ones(c.hidden_size))
        self.lm_head = None if c.tie_word_embeddings else nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self._init()

    def _init(self):
        n = self.config.num_hidden_layers
        for name, p in self.named_parameters():
            if p.dim() < 2 or name.endswith("gate.weight"):
                continue
            if "conv1d" in name:
                continue  # PyTorch's default (uniform over 1/sqrt(width))
            std = 0.02
            if name.endswith("o_proj.weight") or name.endswith("down_proj.weight") or name.endswith(".w2.weight"):
                std = 0.02 / math.sqrt(2 * n)  # GPT-2's residual scaling
            nn.init.normal_(p, 0.0, std)

    def head(self):
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, ids, recurrent: bool = False):
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, recurrent)
        return rms_norm(x, self.norm, self.config.rms_norm_eps) @ self.head().t().to(x.dtype)

    def moe_layers(self):
        return [l.block_sparse_moe for l in self.layers if hasattr(l, "block_sparse_moe")]

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors in KimiLinearForCausalLM's names and shapes (what export.py writes)."""
        out: dict[str, torch.Tensor] = {"model.embed_tokens.weight": self.embed_tokens.weight, "model.norm.weight": self.norm}
        if self.lm_head is not None:
            out["lm_head.weight"] = self.lm_head.weight
        for i, l in enumerate(self.layers):
            p = f"model.layers.{i}."
            out[p + "input_layernorm.weight"] = l.input_layernorm
            out[p + "post_attention_layernorm.weight"] = l.post_attention_layernorm
            a = l.self_attn
            if isinstance(a, LinearAttention):
                for n in ["q_proj", "k_proj", "v_proj", "f_a_proj", "f_b_proj", "b_proj", "g_a_proj", "g_b_proj", "o_proj", "q_conv1d", "k_conv1d", "v_conv1d"]:
                    out[p + f"self_attn.{n}.weight"] = getattr(a, n).weight
                out[p + "self_attn.A_log"] = a.A_log.reshape(1, 1, -1, 1)
                out[p + "self_attn.dt_bias"] = a.dt_bias
                out[p + "self_attn.o_norm.weight"] = a.o_norm
            else:
                for n in ["q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]:
                    out[p + f"self_attn.{n}.weight"] = getattr(a, n).weight
                out[p + "self_attn.kv_a_layernorm.weight"] = a.kv_a_layernorm
            if hasattr(l, "mlp"):
                for n in ["gate_proj", "up_proj", "down_proj"]:
                    out[p + f"mlp.{n}.weight"] = getattr(l.mlp, n).weight
            else:
                m = l.block_sparse_moe
                out[p + "block_sparse_moe.gate.weight"] = m.gate.weight
                out[p + "block_sparse_moe.gate.e_score_correction_bias"] = m.gate.e_score_correction_bias
                for n in ["gate_proj", "up_proj", "down_proj"]:
                    out[p + f"block_sparse_moe.shared_experts.{n}.weight"] = getattr(m.shared_experts, n).weight
                for e, ex in enumerate(m.experts):
                    for n in ["w1", "w2", "w3"]:
                        out[p + f"block_sparse_moe.experts.{e}.{n}.weight"] = getattr(ex, n).weight
        return {k: v.detach() for k, v in out.items()}

    def load_hf_state_dict(self, sd: dict[str, torch.Tensor]):
        mine = self.hf_state_dict()
        missing = [k for k in mine if k not in sd]
        if missing:
            raise KeyError(f"checkpoint lacks {missing[:3]}")
        with torch.no_grad():
            for k, t in mine.items():
                t.copy_(sd[k].reshape(t.shape).to(t.dtype))


def count_params(m: KimiLinear) -> dict[str, int]:
    """Parameters in all, without the embedding, and active per token (the experts a token uses)."""
    c = m.config
    total = sum(p.numel() for p in m.parameters())
    emb = m.embed_tokens.weight.numel() + (0 if m.lm_head is None else m.lm_head.weight.numel())
    per_expert = 3 * c.hidden_size * c.moe_intermediate_size
    inactive = len(m.moe_layers()) * (c.num_experts - c.num_experts_per_token) * per_expert
    # the head's matmul is compute whether or not it is tied
    head = c.vocab_size * c.hidden_size
    return {"total": total, "non_embedding": total - emb, "active_compute": total - emb - inactive + head}


def flops_per_token(m: KimiLinear, ctx: int) -> float:
    """Training FLOPs per token: 6 N (N active, head included) plus attention's: MLA's scores and
    mixing over ctx/2 keys on average, and the linear layers' state work (about 8 K^2 per head
    per token) -- both times 3 for the backward pass."""
    c = m.config
    att = 0.0
    for i in range(c.num_hidden_layers):
        if (i + 1) in c.kda_layers:
            att += 3 * 8 * c.num_heads * c.head_dim * c.head_dim
        else:
            att += 3 * 2 * c.num_attention_heads * (ctx / 2) * (c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim)
    return 6 * count_params(m)["active_compute"] + att
