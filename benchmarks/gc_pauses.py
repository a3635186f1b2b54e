"""Python's garbage collector during training: how often it runs, for how long, the longest pause.

    .venv/bin/python benchmarks/gc_pauses.py [--baseline DIR] [--model lenet5|seed|resnet]
                                             [--batch 64] [--steps 3000] [--rounds 2]

CPython frees an object when the last reference to it goes, except objects in a reference
cycle: those wait for the cyclic garbage collector, which runs after every few hundred
allocations of container objects, and now and then walks every object the process holds
(Numba's alone are about 100,000).  This runs the README's training step ``--steps`` times
in a new process and reports, through ``gc.callbacks``: the collections, the time spent in
them, the longest one, and the median and longest step.  With ``--baseline DIR`` (a
directory holding an older ``npnet`` package, e.g. ``git archive <commit> npnet | tar -x
-C DIR``) the older code runs too, the two taking turns.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from baseline import codes, in_turns, run_worker  # noqa: E402  (benchmarks/baseline.py)

WORKER = r"""
import gc, json, sys, time
import numpy as np
import npnet
model_name, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
with npnet.nn.init_generator(rng):
    model = {"lenet5": npnet.lenet5, "seed": npnet.models.LeNet5,
             "resnet": npnet.models.resnet}[model_name]()
crit = npnet.CrossEntropyLoss()
opt = npnet.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
xs = rng.standard_normal((8, batch, 1, 28, 28)).astype(np.float32)
ys = rng.integers(0, 10, (8, batch))

def step(i):
    opt.zero_grad()
    crit(model(xs[i % 8]), ys[i % 8])
    model.backward(crit.backward())
    opt.step()

for i in range(20):
    step(i)
pauses, started = [], [0.0]

def watch(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        pauses.append(time.perf_counter() - started[0])

gc.callbacks.append(watch)
times = []
for i in range(steps):
    t0 = time.perf_counter()
    step(i)
    times.append(time.perf_counter() - t0)
gc.callbacks.remove(watch)
print(json.dumps({"collections": len(pauses), "gc_ms": 1e3 * sum(pauses),
                  "longest_gc_ms": 1e3 * max(pauses, default=0.0),
                  "median_step_ms": 1e3 * float(np.median(times)),
                  "longest_step_ms": 1e3 * max(times)}))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", metavar="DIR", help="older code to measure in turns")
    ap.add_argument("--model", choices=["lenet5", "seed", "resnet"], default="lenet5")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    both = codes(ap, args.baseline)
    print(f"{args.model}, batch {args.batch}, {args.steps} training steps (the README's) "
          "per run")
    for name, path in in_turns(both, args.rounds):
        m = run_worker(path, WORKER, args.model, args.batch, args.steps)
        print(f"  {name:10s} {m['collections']:5d} collections, {m['gc_ms']:7.1f} ms in "
              f"them (longest {m['longest_gc_ms']:5.1f} ms); step median "
              f"{m['median_step_ms']:.3f} ms, longest {m['longest_step_ms']:.1f} ms",
              flush=True)


if __name__ == "__main__":
    main()
