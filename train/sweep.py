"""The architecture comparison in miniature: MLA-only, GDN-H and Kimi Linear at five sizes
each, every run on the same data with the same recipe, its token budget growing with its size.

    python3 train/sweep.py --out runs/sweep [--parallel 5]

Runs train.py for every (architecture, size) as separate processes, several at once on one GPU
(the models are small enough that one alone leaves it idle), then gathers every log.json into
<out>/sweep.json, which `npm run bench:scaling` fits and plots.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ARCHS = ["mla", "gdnh", "kimi"]
# size -> training tokens: about 1, 1.5, 2, 3 and 4 passes over the 1.72M training tokens
BUDGETS = {1: 1.6e6, 2: 2.4e6, 3: 3.2e6, 4: 4.8e6, 5: 6.4e6}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--parallel", type=int, default=5)
    ap.add_argument("--sizes", default="1,2,3,4,5")
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--max-seconds", type=float, default=400)
    a, extra = ap.parse_known_args(argv)
    jobs = [(f"{arch}-{s}", BUDGETS[int(s)]) for s in a.sizes.split(",") for arch in a.archs.split(",")]
    # biggest first, so the long runs start early
    jobs.sort(key=lambda j: -j[1])
    running: list[tuple[str, subprocess.Popen]] = []
    t0 = time.time()
    while jobs or running:
        while jobs and len(running) < a.parallel:
            name, tok = jobs.pop(0)
            out = os.path.join(a.out, name)
            os.makedirs(out, exist_ok=True)
            cmd = [sys.executable, os.path.join(HERE, "train.py"), "--preset", name, "--tokens", str(tok), "--out", out,
                   "--eval-every", "50", "--max-seconds", str(a.max_seconds), *extra]
            running.append((name, subprocess.Popen(cmd, stdout=open(os.path.join(out, "stdout.txt"), "w"), stderr=subprocess.STDOUT)))
        time.sleep(1)
        for r in list(running):
            if r[1].poll() is not None:
                running.remove(r)
                print(f"{r[0]} exited {r[1].returncode} at {time.time() - t0:.0f}s", flush=True)
    logs = []
    for d in sorted(os.listdir(a.out)):
        p = os.path.join(a.out, d, "log.json")
        if os.path.exists(p):
            log = json.load(open(p))
            log.pop("config", None)
            logs.append(log)
    json.dump({"runs": logs, "wall_seconds": round(time.time() - t0, 1)}, open(os.path.join(a.out, "sweep.json"), "w"), indent=1)
    print(f"sweep: {len(logs)} runs in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
