"""python3 -m pytest train/test_kimi_linear.py (or run it directly): the chunked delta rule equals
the per-token loop, for KDA's per-channel gate and GDN-H's per-head gate, strong decay included,
and the model's forward agrees with itself both ways."""
import torch

from kimi_linear import Config, KimiLinear, delta_rule_chunked, delta_rule_recurrent, l2_normalize


def case(gate_per_head: bool, strength: float, T: int = 77):
    g = torch.Generator().manual_seed(3)
    B, H, K, V = 2, 3, 16, 8
    q = l2_normalize(torch.randn(B, H, T, K, generator=g, dtype=torch.float64)) / 4
    k = l2_normalize(torch.randn(B, H, T, K, generator=g, dtype=torch.float64))
    v = torch.randn(B, H, T, V, generator=g, dtype=torch.float64)
    shape = (B, H, T, 1) if gate_per_head else (B, H, T, K)
    gate = (-torch.rand(*shape, generator=g, dtype=torch.float64) * strength).expand(B, H, T, K)
    beta = torch.rand(B, H, T, generator=g, dtype=torch.float64)
    o1, S1 = delta_rule_recurrent(q, k, v, gate, beta, torch.zeros(B, H, K, V, dtype=torch.float64))
    o2, S2 = delta_rule_chunked(q, k, v, gate, beta, chunk=16)
    return (o1 - o2).abs().max().item(), (S1 - S2).abs().max().item()


def test_chunked_equals_recurrent():
    for per_head in (False, True):
        for strength in (0.05, 1.0, 30.0):
            do, ds = case(per_head, strength)
            assert do < 1e-10 and ds < 1e-10, (per_head, strength, do, ds)


def test_model_forward_both_ways():
    for gate in ("channel", "head"):
        torch.manual_seed(0)
        m = KimiLinear(Config(vocab_size=300, hidden_size=32, num_heads=2, head_dim=16, num_attention_heads=2,
                              qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, kv_lora_rank=16,
                              intermediate_size=48, num_experts=4, moe_intermediate_size=8, gate_type=gate)).double()
        ids = torch.randint(0, 300, (2, 40))
        a, b = m(ids), m(ids, recurrent=True)
        assert (a - b).abs().max().item() < 1e-9


if __name__ == "__main__":
    test_chunked_equals_recurrent()
    test_model_forward_both_ways()
    print("ok")
