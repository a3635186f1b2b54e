"""The machine's limit: a training step's floating-point work, and the sgemm peak.

A LeNet-5 training step is almost all matrix products: each convolution and each Linear
layer multiplies and adds, per image, ``terms`` numbers into each of its ``outputs``
values (conv: C*kh*kw terms into F*OH*OW outputs; Linear: in_features into
out_features), and the ReLUs, pools, loss and optimiser do a few operations per value,
a hundred times less.  With MACs = outputs * terms per image, and 2 FLOP per multiply-add:

    forward            2 * MACs        y = W x
    backward, dL/dW    2 * MACs        dW = g x^T
    backward, dL/dx    2 * MACs        dx = W^T g   (not for the first layer: training
                                                     never reads dL/d(images), npnet skips it)

so a step costs about 6 * MACs per image (LeNet-5: 2.26 MFLOP).  ``step_flops`` derives
this from the layers' shapes, as a training forward records them (``npnet.autograd``),
for any model; ``sgemm_gflops`` measures how fast this machine multiplies large float32
matrices (NumPy's OpenBLAS on ``threads`` threads): no kernel of the same arithmetic runs
faster, so images/s can be at most ``peak / FLOP per image``, the limit.
"""
from __future__ import annotations

import time

import numpy as np


def product_macs(layer, in_shape) -> int:
    """Multiply-adds per image of the layer's matrix product, for an input of
    ``in_shape`` (N first); 0 for a layer without one (ReLU, pool, reshape, ...)."""
    import npnet
    if isinstance(layer, npnet.layers.ConvReLUMaxPool2d):
        layer = layer.conv                       # the product is the convolution's
    if isinstance(layer, npnet.Conv2d):
        out_shape = layer.output_shape(in_shape)             # (N, F, OH, OW)
    elif isinstance(layer, npnet.Linear):
        out_shape = (*in_shape[:-1], layer.params["weight"].shape[0])
    else:
        return 0
    w = layer.params["weight"]                   # (F, C, kh, kw) or (out, in)
    outputs = int(np.prod(out_shape[1:]))
    terms = w.size // w.shape[0]
    return outputs * terms


def step_flops(model, x) -> list:
    """One row per recorded call of a training forward of ``model`` on ``x``:
    (name, layer, forward FLOP per image, backward FLOP per image), with the backward
    of a call that reads only the model's input left without its dL/dx."""
    import npnet
    model.train()
    model(x)
    tape = npnet.autograd.tape_of(model)
    rows = []
    for c, name in zip(tape.calls, tape.call_names()):
        in_shape = x.shape if isinstance(c.sources[0], npnet.autograd.Input) \
            else c.sources[0].shape
        macs = product_macs(c.module, in_shape)
        reads_images = isinstance(c.sources[0], npnet.autograd.Input) \
            and c.module.can_skip_grad_in
        rows.append((name, c.module, 2 * macs, 2 * macs * (1 if reads_images else 2)))
    return rows


def per_image(model, x) -> dict:
    """{'train': FLOP per image of a training step, 'infer': of a forward}."""
    rows = step_flops(model, x)
    fwd = sum(r[2] for r in rows)
    return {"train": fwd + sum(r[3] for r in rows), "infer": fwd}


def sgemm_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """The best GFLOP/s of an (n, n) @ (n, n) float32 product with OpenBLAS on
    ``threads`` threads, over ``repeats`` products (2 n^3 FLOP each): the peak.

    OpenBLAS's thread count is set for the measurement only and given back after it
    (npnet holds it at one thread; the peak is what the run's cores can do together).
    """
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    best = np.inf
    with threadpool_limits(limits=threads, user_api="blas"):
        np.matmul(a, b, out=c)                   # first touch, thread start-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def cpu(cpuinfo: str | None = None) -> str:
    """The CPU's model name and its widest vector instructions, e.g. "AMD EPYC, AVX2".

    Figures move with it (docs/performance.md: on an AMD EPYC without AVX-512 npnet's
    inference ratio was half the Xeon's), so every benchmark run prints it.  Read from
    ``cpuinfo`` (the text of /proc/cpuinfo, read here when None); "unknown CPU" where
    there is none.
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    fields = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    isa = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"),
                                        ("avx", "AVX"), ("sse2", "SSE2")) if flag in flags),
               "vector instructions unknown")
    return f"{fields.get('model name', 'unknown CPU')}, {isa}"
