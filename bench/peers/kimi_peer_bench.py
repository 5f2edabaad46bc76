"""What a user would run instead of our GPU node: Moonshot's modeling_kimi.py with fla's kernels,
in BF16, generating with its own cache (KimiDynamicCache), timed on the same GPU and shapes as
bench/gpu-batch.ts (kernels-cuda/run-gpu.sh peer runs both).

Nothing of the peer is in this repository: pass --peer DIR holding fla/ (fla-org's
flash-linear-attention, `git archive b77fa002 fla`) and modeling_kimi.py (Moonshot's file, as
fetched). This script writes the package the file expects around it (a configuration class of
ours, with `is_kda_layer`, and a stand-in for transformers' OutputRecorder, which newer
transformers lack and which only a class the benchmark never builds uses), builds the decoder
layers of the config given (embedding, layers, final norm, LM head, random BF16 weights: time
does not depend on their values and both routings spread tokens over the experts), prefills a
context and times greedy decode steps, at batch 1 and batched. Results as JSON on stdout's last
line and in --out.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import torch


def make_package(peer_dir):
    root = tempfile.mkdtemp(prefix="kimi-peer-")
    pkg = os.path.join(root, "kimi_peer")
    os.makedirs(pkg)
    shutil.copy(os.path.join(peer_dir, "modeling_kimi.py"), pkg)
    open(os.path.join(pkg, "__init__.py"), "w").close()
    with open(os.path.join(pkg, "configuration_kimi.py"), "w") as f:
        f.write(
            "class KimiLinearConfig:\n"
            "    def __init__(self, d):\n"
            "        self.__dict__.update(d)\n"
            "        la = d.get('linear_attn_config')\n"
            "        self.is_mla = True\n"
            "        self._kda = set(la['kda_layers']) if la else set()\n"
            "    def is_kda_layer(self, i):\n"
            "        return (i + 1) in self._kda\n"
        )
    sys.path.insert(0, peer_dir)  # fla
    sys.path.insert(0, root)
    import transformers.utils.generic as generic

    if not hasattr(generic, "OutputRecorder"):

        class OutputRecorder:  # only KimiPreTrainedModel's class attribute builds one
            def __init__(self, *args, **kwargs):
                pass

        generic.OutputRecorder = OutputRecorder
    import kimi_peer.modeling_kimi as mk

    return mk


def build(mk, cfg_json, layers):
    d = dict(cfg_json)
    d["num_hidden_layers"] = layers
    d.update(hidden_act="silu", rope_theta=10000.0, initializer_range=0.02, pad_token_id=None,
             output_attentions=False, output_hidden_states=False, use_cache=True, use_return_dict=True)
    cfg = mk.KimiLinearConfig(d)
    cfg._attn_implementation = "sdpa"
    dev = torch.device("cuda")
    with dev:
        torch.set_default_dtype(torch.bfloat16)
        embed = torch.nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        blocks = torch.nn.ModuleList([mk.KimiDecoderLayer(cfg, i) for i in range(layers)])
        norm = mk.KimiRMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        head = torch.nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        torch.set_default_dtype(torch.float32)
    with torch.no_grad():
        for m in [embed, head, *blocks.modules()]:
            if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
                m.weight.normal_(0.0, 0.02)
        for name, p in blocks.named_parameters():
            # parameters the file leaves uninitialized (torch.empty)
            if name.endswith("dt_bias") or name.endswith("e_score_correction_bias"):
                p.zero_()
    for m in (embed, blocks, norm, head):
        m.eval()
    return cfg, embed, blocks, norm, head


@torch.no_grad()
def forward(mk, parts, cache, ids):
    cfg, embed, blocks, norm, head = parts
    h = embed(ids)
    for layer in blocks:
        h = layer(h, attention_mask=None, past_key_values=cache, use_cache=True)
    return head(norm(h[:, -1:, :]))


def run(mk, parts, batch, context, steps, chunk):
    cfg = parts[0]
    cache = mk.KimiDynamicCache(cfg)
    g = torch.Generator(device="cuda").manual_seed(7)
    ids = torch.randint(0, cfg.vocab_size, (batch, context), device="cuda", generator=g)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for s in range(0, context, chunk):
        logits = forward(mk, parts, cache, ids[:, s:s + chunk])
    torch.cuda.synchronize()
    prefill = time.perf_counter() - t0
    tok = logits.argmax(-1)
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        logits = forward(mk, parts, cache, tok)
        tok = logits.argmax(-1)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    times = sorted(times[2:])  # the first steps compile fla's decode kernels
    ms = 1e3 * times[len(times) // 2]
    return {"batch": batch, "context": context, "prefillS": prefill, "msPerStep": ms, "tokPerS": batch * 1e3 / ms}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--layers", type=int, default=0, help="0: the config's")
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--out")
    a = ap.parse_args()
    t0 = time.perf_counter()
    mk = make_package(a.peer)
    import fla
    import transformers

    cfg_json = json.load(open(a.config))
    layers = a.layers or cfg_json["num_hidden_layers"]
    parts = build(mk, cfg_json, layers)
    print(f"peer built: {layers} layers, {torch.cuda.memory_allocated() / 2**30:.1f} GiB, {time.perf_counter() - t0:.0f} s "
          f"(torch {torch.__version__}, transformers {transformers.__version__}, fla {getattr(fla, '__version__', '?')})", flush=True)
    res = {"peer": "modeling_kimi.py (troy12x/quasar-kimi 153735f) + fla b77fa002, BF16, sdpa", "gpu": torch.cuda.get_device_name(),
           "torch": torch.__version__, "transformers": transformers.__version__, "layers": layers, "rows": []}
    for b in [int(x) for x in a.batches.split(",")]:
        r = run(mk, parts, b, a.context, a.steps, a.chunk)
        res["rows"].append(r)
        print(f"peer batch {b} at {a.context}: {r['msPerStep']:.2f} ms/step, {r['tokPerS']:.1f} tok/s (prefill {r['prefillS']:.1f} s)", flush=True)
        if a.out:  # after each row: a caller that stops this run early keeps what it measured
            json.dump(res, open(a.out, "w"), indent=1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
