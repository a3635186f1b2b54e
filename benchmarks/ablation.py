"""What each optimisation bought: LeNet-5 training images/s under several configurations.

    .venv/bin/python benchmarks/ablation.py [--batch 64] [--rounds 5] [--steps 60]
                                            [--baseline DIR]

Each configuration runs in its own process, one timed round at a time, the
configurations taking turns (so they share the machine's load).  ``--baseline DIR``
adds older code (a directory holding its ``npnet`` package, e.g. made with
``git archive <commit> npnet | tar -x -C DIR``; its API must run this worker's loop) with
both thread pools at their defaults and with OpenBLAS at one thread.  Figures: median
images/s (min-max).  The step is the README's, ``model.backward(crit.backward())``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r"""
import json, sys, time
import numpy as np
cfg = json.loads(sys.argv[1])
if cfg.get("blas1"):
    from threadpoolctl import threadpool_limits
    threadpool_limits(1, user_api="blas")
import npnet
model = npnet.lenet5(rng=np.random.default_rng(0))
if cfg.get("no_fuse"):
    npnet.fusion.set_fusion(model, False)
crit = npnet.CrossEntropyLoss()
opt = npnet.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
B = cfg["batch"]
rng = np.random.default_rng(1)
xs = rng.standard_normal((8, B, 1, 28, 28)).astype(np.float32)
ys = rng.integers(0, 10, (8, B))
read_grad_in = cfg.get("read_grad_in", False)
def run(steps):
    t0 = time.perf_counter()
    for i in range(steps):
        opt.zero_grad()
        crit(model(xs[i % 8]), ys[i % 8])
        grad_in = model.backward(crit.backward())
        if read_grad_in:
            np.asarray(grad_in)
        opt.step()
    return B * steps / (time.perf_counter() - t0)
run(3)
for line in sys.stdin:
    print(run(int(line)), flush=True)
"""

CONFIGS = [
    ("layers one by one (set_fusion False)", {"no_fuse": True}),
    ("fused, dL/dx of the images read", {"read_grad_in": True}),
    ("fused, dL/dx never read (README)", {}),
]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--baseline", metavar="DIR")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    configs = list(CONFIGS)
    if args.baseline:
        configs = [("before: both pools at defaults", {"path": args.baseline}),
                   ("before: OpenBLAS 1 thread", {"path": args.baseline, "blas1": True})
                   ] + configs
    procs = []
    for name, cfg in configs:
        cfg = dict(cfg, batch=args.batch)
        env = dict(os.environ, PYTHONPATH=cfg.get("path", ROOT))
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(cfg)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, env=env, cwd=cfg.get("path", ROOT)))
    rates = [[] for _ in configs]
    for r in range(args.rounds):
        for i, p in enumerate(procs):
            p.stdin.write(f"{args.steps}\n")
            p.stdin.flush()
            rates[i].append(float(p.stdout.readline()))
    for p in procs:
        p.stdin.close()
        p.wait()
    print(f"LeNet-5 training, batch {args.batch}, images/s: median (min-max) over "
          f"{args.rounds} rounds of {args.steps} steps")
    out = {}
    for (name, _), v in zip(configs, rates):
        print(f"  {name:<36}{np.median(v):>9,.0f}  ({min(v):,.0f}-{max(v):,.0f})")
        out[name] = v
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch": args.batch, "images_per_s": out}, f, indent=1)


if __name__ == "__main__":
    main()
