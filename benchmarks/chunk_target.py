"""The shifted-product kernels' one tuning constant, ``chunk_size``'s target, compared.

    .venv/bin/python benchmarks/chunk_target.py [--targets 600 1800] [--resnet]

``npnet.kernels.fused.chunk_size(..., target)`` sets how many samples each task of the
fused kernels (and of Conv2d's shifted product) lays side by side: as many as keep a
matrix row within ``target`` positions, at most 8.  This times the README's training
step of ``npnet.lenet5()`` at batch 64 and 256 and its eval-mode forward at batch 1,000
(with ``--resnet`` also the ResNet's step at batch 128) with each target in turn, step
after step in one process, and prints the medians and their ratio to the first target's.
Taking turns inside one process is what makes a few percent visible on a shared machine
whose speed drifts by a quarter from one minute to the next; separate runs cannot.
The models' results differ between targets only by rounding (S decides which partial
sums of dL/dW are formed).
"""
from __future__ import annotations

import argparse
import functools
import time

import numpy as np

import npnet
from npnet.kernels import fused as kernels

_DEFAULT = kernels.chunk_size


def _use(target):
    """Make every caller's chunk_size use ``target`` (the layers look it up at each call:
    the fused layers in their module, Conv2d in the kernels' module)."""
    patched = functools.partial(_DEFAULT, target=target)
    kernels.chunk_size = patched
    npnet.layers.fused.chunk_size = patched


def _training(model, batch, rng):
    crit = npnet.CrossEntropyLoss()
    opt = npnet.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xs = [rng.standard_normal((batch, 1, 28, 28)).astype(np.float32) for _ in range(2)]
    ts = [rng.integers(0, 10, batch) for _ in range(2)]

    def step(i):                                   # the README's training step
        opt.zero_grad()
        crit(model(xs[i % 2]), ts[i % 2])
        model.backward(crit.backward())
        opt.step()
    return step


def _inference(model, batch, rng):
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    model.eval()
    return lambda i: model(x)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, nargs="+", default=[600, 1800])
    ap.add_argument("--resnet", action="store_true", help="also the ResNet at batch 128")
    ap.add_argument("--steps", type=int, default=100,
                    help="timed calls per target (a fifth of it for the ResNet)")
    args = ap.parse_args(argv)
    if len(args.targets) < 2 or min(args.targets) < 1:
        ap.error("--targets: two or more positive numbers of positions")

    rng = np.random.default_rng(0)
    cases = [("lenet5, training, batch 64", lambda: _training(npnet.lenet5(rng=rng), 64, rng),
              args.steps * 2),
             ("lenet5, training, batch 256", lambda: _training(npnet.lenet5(rng=rng), 256,
                                                               rng), args.steps),
             ("lenet5, inference, batch 1000", lambda: _inference(npnet.lenet5(rng=rng),
                                                                  1000, rng), args.steps)]
    if args.resnet:
        cases.append(("resnet, training, batch 128",
                      lambda: _training(npnet.models.resnet(), 128, rng),
                      max(5, args.steps // 5)))
    try:
        print(f"medians of calls taken in turns, target by target (ms); ratio to "
              f"target {args.targets[0]}")
        for name, make, steps in cases:
            call = make()
            times = {t: [] for t in args.targets}
            for i in range(3):                     # warm: compile, fill the caches
                for t in args.targets:
                    _use(t)
                    call(i)
            for i in range(steps):
                for t in args.targets:
                    _use(t)
                    t0 = time.perf_counter()
                    call(i)
                    times[t].append(time.perf_counter() - t0)
            med = {t: float(np.median(v)) * 1e3 for t, v in times.items()}
            base = med[args.targets[0]]
            print(f"{name:<32}" + "".join(f"  {t}: {m:8.3f} ({m / base:.3f})"
                                          for t, m in med.items()))
    finally:
        kernels.chunk_size = npnet.layers.fused.chunk_size = _DEFAULT


if __name__ == "__main__":
    main()
