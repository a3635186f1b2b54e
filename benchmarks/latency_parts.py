"""Where one image's eval-mode forward goes: the fused kernels, the layers' own code, npnet's.

    .venv/bin/python benchmarks/latency_parts.py [--model lenet5|seed] [--calls 2000]
                                                 [--rounds 7]

Three things are timed in turn, in one process, each the median of ``--calls`` calls, and
the best of ``--rounds`` rounds is printed (the machine is shared: the rounds alternate,
so all three see the same load):

* **the model call**: ``model(x)`` in eval mode, as ``bench_lenet.py`` times it;
* **the layers by hand**: each call of the model's last training forward (as its tape
  lists them: a fused conv -> ReLU -> pool is one call) made by calling that layer's
  ``forward`` directly, in the tape's order, on one image in eval mode;
* **the fused kernels alone**: the kernel the layers call for that image (one chunk:
  ``conv_relu_pool_forward_serial``) with the arguments they pass it (caught on one call).

The model call minus the layers by hand is what npnet adds around the layers (the module
call, the fusion rules and their deferred values, the output's bookkeeping); the layers by
hand minus the kernels is the layers' Python and their small NumPy calls (checks, shapes,
conv3 and the linear layers' matmuls, the ReLUs).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import npnet
from npnet.layers import fused


def _median_us(fn, calls):
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e6


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["lenet5", "seed"], default="lenet5")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    with npnet.nn.init_generator(rng):
        model = npnet.lenet5(rng=rng) if args.model == "lenet5" else npnet.models.LeNet5()
    x = rng.standard_normal((1, 1, 28, 28)).astype(np.float32)
    model(x)                                        # a training forward: its tape
    calls = [c.module for c in npnet.autograd.tape_of(model).calls]
    model.eval()

    inputs, h = [], x                               # each call's input, in eval mode
    for layer in calls:
        inputs.append(h)
        h = layer.forward(h)
    if not np.array_equal(h, model(x)):
        raise RuntimeError("the layers by hand do not compute the model's output")

    caught = []                                     # (kernel, its arguments)
    names = ("conv_relu_pool_forward", "conv_relu_pool_forward_serial")  # one image: serial
    kernels_of = {name: getattr(fused, name) for name in names}
    for name, k in kernels_of.items():
        setattr(fused, name, lambda *a, k=k: caught.append((k, a)) or k(*a))
    try:
        for layer, a in zip(calls, inputs):
            if isinstance(layer, npnet.ConvReLUMaxPool2d):
                layer.forward(a)
    finally:
        for name, k in kernels_of.items():
            setattr(fused, name, k)

    def by_hand():
        for layer, a in zip(calls, inputs):
            layer.forward(a)

    def kernels():
        for k, a in caught:
            k(*a)

    parts = {"model call": lambda: model(x), "layers by hand": by_hand,
             "fused kernels alone": kernels}
    for fn in parts.values():                       # warm: compile, fill caches
        for _ in range(200):
            fn()
    best = {name: float("inf") for name in parts}
    for _ in range(args.rounds):
        for name, fn in parts.items():
            best[name] = min(best[name], _median_us(fn, args.calls))

    m, h, k = best["model call"], best["layers by hand"], best["fused kernels alone"]
    print(f"{args.model}, one image, eval mode ({len(calls)} calls: "
          f"{', '.join(type(c).__name__ for c in calls)}); best of {args.rounds} medians")
    print(f"  model call            {m:7.1f} us")
    print(f"  layers by hand        {h:7.1f} us   (npnet around them: {m - h:.1f} us)")
    print(f"  fused kernels alone   {k:7.1f} us   (the layers' own code: {h - k:.1f} us)")


if __name__ == "__main__":
    main()
