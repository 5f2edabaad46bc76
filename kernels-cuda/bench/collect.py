# kernels-cuda/bench/collect.py DIR GPU_TAG
# Merges what one device run wrote into DIR (cuda-kda-step.json, cuda-kda-layer.json, cuda-mla-decode.json,
# cuda-engine-*.json, cuda-gpu-node-*.json, arch-cuda-*.json, whichever exist) into
# DIR/cuda-GPU_TAG.json, the single file per GPU that bench/README quotes.
import glob, json, os, sys

d, tag = sys.argv[1], sys.argv[2]
parts = {"kdaKernels": "cuda-kda-step*.json", "kdaLayer": "cuda-kda-layer*.json", "mlaKernels": "cuda-mla-decode*.json", "engine": "cuda-engine-*.json",
         "gpuNode": "cuda-gpu-node-*.json", "arch": "arch-cuda-*.json"}
out = {}
for key, pat in parts.items():
    files = sorted(glob.glob(os.path.join(d, pat)))
    if files:
        with open(files[0]) as fh:
            out[key] = json.load(fh)
with open(os.path.join(d, f"cuda-{tag}.json"), "w") as fh:
    json.dump(out, fh, indent=1)
print(f"wrote {os.path.join(d, f'cuda-{tag}.json')}: {', '.join(out)}")
