"""Where a cold start's time goes: each Numba kernel's compile time, in a new process.

    .venv/bin/python benchmarks/compile_times.py [--batch 64] [--model lenet5]

Runs ``import npnet``, builds the model and takes the first training step (the README's),
in a new process whose ``NUMBA_CACHE_DIR`` is an empty temporary directory, so every
kernel compiles, and prints the compile time of each of npnet's Numba functions in the
order Numba compiled them (Numba's ``numba:compile`` events).  A kernel's time includes
the helpers it calls, compiled first and listed indented below it; NumPy functions that
Numba compiles on the way (``np.empty`` ...) count in their caller's time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from numba.core import event

done, open_ = [], []

class Times(event.Listener):
    def on_start(self, ev):
        open_.append(time.perf_counter())

    def on_end(self, ev):
        fn = ev.data["dispatcher"].py_func
        done.append((len(open_) - 1, f"{fn.__module__}.{fn.__qualname__}",
                     time.perf_counter() - open_.pop()))

event.register("numba:compile", Times())
import npnet
t_import = time.perf_counter() - t0
rng = np.random.default_rng(0)
model = getattr(npnet.models, sys.argv[1])(rng=rng)
crit = npnet.CrossEntropyLoss()
opt = npnet.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x = rng.standard_normal((int(sys.argv[2]), 1, 28, 28)).astype(np.float32)
y = rng.integers(0, 10, len(x))
opt.zero_grad()
crit(model(x), y)
model.backward(crit.backward())
opt.step()
print(json.dumps({"import": t_import, "total": time.perf_counter() - t0, "kernels": done}))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--model", default="lenet5", help="a builder of npnet.models")
    args = ap.parse_args(argv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="npnet-numba-cache-") as cache:
        r = subprocess.run([sys.executable, "-c", CHILD, args.model, str(args.batch)],
                           env=dict(os.environ, NUMBA_CACHE_DIR=cache), cwd=root,
                           capture_output=True, text=True, check=True)
    out = json.loads(r.stdout.splitlines()[-1])
    # events end innermost first: print each kernel before the helpers it compiled
    rows, pending = [], []
    for depth, name, secs in out["kernels"]:
        if not name.startswith("npnet."):
            continue
        children = [p for p in pending if p[0] > depth]
        pending = [p for p in pending if p[0] <= depth] + [(depth, name, secs, children)]
    tops = 0.0

    def show(node, indent):
        depth, name, secs, children = node
        rows.append(f"{'  ' * indent}{name:<{60 - 2 * indent}}{secs:>7.2f} s")
        for c in children:
            show(c, indent + 1)
    for node in pending:
        show(node, 0)
        tops += node[2]
    print(f"import npnet + {args.model} + first training step at batch {args.batch}, empty "
          f"Numba cache: {out['total']:.1f} s (import {out['import']:.1f} s)")
    print("\n".join(rows))
    print(f"{'npnet kernels, in all':<60}{tops:>7.2f} s")


if __name__ == "__main__":
    main()
