"""Forward and backward time of each step of a LeNet-5 training step, in milliseconds.

    .venv/bin/python benchmarks/profile_layers.py [--batch 64] [--repeats 200] [--no-fuse]

With fusion on (the default, as Sequential runs it) a fused Conv2d -> ReLU -> MaxPool2d
block is one row; ``--no-fuse`` times every layer on its own.  Each figure is the median
over the repeats (the machine is shared: medians resist the odd slow call), after warm-up.
The loss and the optimizer step are timed too, so the rows add up to a training step.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import npnet
from npnet import fused
from npnet.losses import CrossEntropyLoss
from npnet.optim import SGD


def step_name(model, step):
    names = {id(layer): name for name, layer in model.layers.items()}
    if isinstance(step, fused._FUSED):
        return "+".join(names[id(layer)] for layer in step.layers)
    return names[id(step)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--no-fuse", action="store_true")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    model = npnet.lenet5(rng=rng)
    x = rng.standard_normal((args.batch, 1, 28, 28)).astype(np.float32)
    t = rng.integers(0, 10, args.batch)
    crit = CrossEntropyLoss()
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9)
    layers = list(model.layers.values())
    plan = None if args.no_fuse else fused.build_plan(layers)
    steps = plan if plan is not None else layers
    names = [step_name(model, s) for s in steps]
    fwd = {n: [] for n in names}
    bwd = {n: [] for n in names}
    extra = {"loss": [], "loss.backward": [], "zero_grad": [], "opt.step": [], "total": []}

    for r in range(args.repeats + 20):
        keep = r >= 20
        t0 = time.perf_counter()
        s = time.perf_counter()
        opt.zero_grad()
        extra["zero_grad"].append(time.perf_counter() - s)
        h = x
        for name, step in zip(names, steps):
            s = time.perf_counter()
            h = step.forward(h)
            fwd[name].append(time.perf_counter() - s)
        s = time.perf_counter()
        crit(h, t)
        extra["loss"].append(time.perf_counter() - s)
        s = time.perf_counter()
        g = crit.backward()
        extra["loss.backward"].append(time.perf_counter() - s)
        for i in range(len(steps) - 1, -1, -1):
            step, name = steps[i], names[i]
            s = time.perf_counter()
            if i == 0 and step.can_skip_grad_in if not isinstance(step, fused._FUSED) \
                    else i == 0:
                g = step.backward(g, need_grad_in=False)
            else:
                g = step.backward(g)
            bwd[name].append(time.perf_counter() - s)
        s = time.perf_counter()
        opt.step()
        extra["opt.step"].append(time.perf_counter() - s)
        extra["total"].append(time.perf_counter() - t0)
        if not keep:
            for d in (fwd, bwd, extra):
                for v in d.values():
                    v.clear()

    med = lambda v: 1e3 * float(np.median(v))      # noqa: E731
    print(f"LeNet-5, batch {args.batch}, fused={'off' if plan is None else 'on'}, "
          f"threads {npnet.threads.policy()}")
    print(f"{'step':<22}{'forward ms':>12}{'backward ms':>13}")
    for name in names:
        print(f"{name:<22}{med(fwd[name]):>12.3f}{med(bwd[name]):>13.3f}")
    for k in ("loss", "loss.backward", "zero_grad", "opt.step"):
        print(f"{k:<22}{med(extra[k]):>12.3f}")
    tot = med(extra["total"])
    print(f"{'total step':<22}{tot:>12.3f}   -> {args.batch / tot * 1e3:,.0f} images/s")


if __name__ == "__main__":
    main()
