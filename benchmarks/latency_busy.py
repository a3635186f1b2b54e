"""One image's eval-mode forward with pauses between the calls, on a quiet and a busy machine.

    .venv/bin/python benchmarks/latency_busy.py [--baseline DIR] [--calls 500] [--gap-ms 1]
                                                [--rounds 2]

``bench_lenet.py`` times one-image calls back to back.  A program that predicts one image
at a time (a demo, a server) calls less often, and shares the machine: between two calls
the idle workers of a thread pool go to sleep, and a parallel kernel returns only when
every worker has run, even one with no work.  This times ``npnet.lenet5()``'s forward of
one image in eval mode, ``--calls`` calls back to back and ``--calls`` calls ``--gap-ms``
apart (medians and 90th percentiles), first on a quiet machine and then while another
process trains LeNet-5 (the README's step at batch 64, npnet on both threads).  Each
measurement is a new process; with ``--baseline DIR`` (a directory holding an older
``npnet`` package, e.g. ``git archive <commit> npnet | tar -x -C DIR``) the older code is
measured too, the two taking turns (the first of each round alternating).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from baseline import ROOT, codes, in_turns, run_worker  # noqa: E402  (benchmarks/baseline.py)

WORKER = r"""
import json, sys, time
import numpy as np
calls, gap = int(sys.argv[1]), float(sys.argv[2])
import npnet
rng = np.random.default_rng(0)
model = npnet.lenet5(rng=rng)
x = rng.standard_normal((1, 1, 28, 28)).astype(np.float32)
model(x)
model.eval()
for _ in range(50):
    model(x)
out = {}
for name, pause in (("back to back", 0.0), (f"{gap * 1e3:g} ms apart", gap)):
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
        if pause:
            time.sleep(pause)
    t = np.array(times) * 1e3
    out[name] = (float(np.median(t)), float(np.percentile(t, 90)))
print(json.dumps(out))
"""

TRAINER = r"""
import numpy as np, npnet
model = npnet.lenet5(rng=np.random.default_rng(0))
crit = npnet.CrossEntropyLoss()
opt = npnet.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
rng = np.random.default_rng(1)
x = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
y = rng.integers(0, 10, 64)
while True:
    opt.zero_grad()
    crit(model(x), y)
    model.backward(crit.backward())
    opt.step()
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", metavar="DIR", help="older code to measure in turns")
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--gap-ms", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    both = codes(ap, args.baseline)
    print(f"npnet.lenet5(), one image, eval mode; {args.calls} calls each way; "
          "median / 90th percentile, ms")
    for load in ("quiet", "another process training LeNet-5"):
        trainer = None
        if load != "quiet":
            trainer = subprocess.Popen([sys.executable, "-c", TRAINER], cwd=ROOT,
                                       env=dict(os.environ, PYTHONPATH=ROOT))
            time.sleep(5)                          # past its import and first steps
        try:
            for name, path in in_turns(both, args.rounds):
                row = run_worker(path, WORKER, args.calls, args.gap_ms / 1e3)
                cells = "   ".join(f"{k}: {m:6.3f} / {p:6.3f}" for k, (m, p) in row.items())
                print(f"  {load:34s} {name:10s} {cells}", flush=True)
        finally:
            if trainer is not None:
                trainer.kill()
                trainer.wait()


if __name__ == "__main__":
    main()
