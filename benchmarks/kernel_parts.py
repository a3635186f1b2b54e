"""Inside LeNet-5's fused kernels: their matrix products against OpenBLAS's, on one core.

    .venv/bin/python benchmarks/kernel_parts.py [--batch 256] [--rounds 200]

Takes one training step of ``npnet.lenet5()`` (the README's), catches the arguments the
two ``ConvReLUMaxPool2d`` layers pass to ``conv_relu_pool_forward`` and
``conv_relu_pool_backward``, and times, on one core (Numba and OpenBLAS at one thread),
per sample:

* **the whole kernel**, as the layer calls it in training, and the forward kernel as it
  is called in eval mode (no winner indices: ``arg`` with no rows);
* **its products**: the blocked products the kernel runs for each chunk of S samples
  (npnet/kernels/fused.py: ``_gemm_shift`` forward; ``_gemm_nt_shift`` for dL/dW and
  ``_gemm_tn_shift_acc``, the product for dL/dx with its scatter-add, backward), called
  on one chunk's real operands;
* **OpenBLAS on the same products**: NumPy's matmul of the same operands, with the
  column matrix written out (``cols[k] = xp[off[k] : off[k] + L]``, the wide positions
  included): what the best-tuned library does with exactly this arithmetic.

"The rest" is the whole kernel minus its products: padding, bias, the ReLU and pool
epilogue and the copy to the output (forward), the gradient's scatter into dL/dz, dL/dx's
padded buffer and its copy out (backward).  All calls take turns, round after round, in
one process, and the medians are printed: on a shared machine whose speed drifts by a
quarter from one minute to the next, only calls timed side by side can be compared.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import npnet
from npnet.kernels import fused as K
from npnet.layers import fused as layers
from numba import njit


def _catch(model, crit, x, t):
    """The fused kernels' arguments in one training step: {(layer index, 'forward' or
    'backward'): args}."""
    caught = {}
    real = {"forward": layers.conv_relu_pool_forward,
            "backward": layers.conv_relu_pool_backward}
    seen = {"forward": 0, "backward": 0}

    def spy(kind):
        def kernel(*a):
            i = seen[kind] if kind == "forward" else 1 - seen[kind]   # backward: last first
            seen[kind] += 1
            caught[(i, kind)] = a
            return real[kind](*a)
        return kernel

    layers.conv_relu_pool_forward = spy("forward")
    layers.conv_relu_pool_backward = spy("backward")
    try:
        crit(model(x), t)
        model.backward(crit.backward())
    finally:
        layers.conv_relu_pool_forward = real["forward"]
        layers.conv_relu_pool_backward = real["backward"]
    return caught


def _chunk0(N, C, H, W, kh, kw, ph, pw, OH, OW, S, xps):
    """The first chunk's size, wide length, row offsets and padded samples (``_chunk``)."""
    Hp, (Wq, Wt) = H + 2 * ph, K.row_layout(W, pw, OW)          # stride 1: one phase
    off_full = K._offsets(C, kh, kw, 1, 1, Hp, S * Wq + Wt)
    _, Sc, _, L, off, xp = K._chunk(0, S, N, C, kh, kw, 1, 1, Hp, Wq, Wt, OH, OW, off_full, xps)
    return Sc, L, off, np.ascontiguousarray(xp)


@njit(nogil=True)
def _forward_products(reps, w2, xp, off, L, z):
    zf, zoff = z.reshape(z.size), np.arange(z.shape[0]) * z.shape[1]
    for _ in range(reps):
        K._gemm_shift(w2, xp, off, L, zf, zoff)


@njit(nogil=True)
def _backward_products(reps, gz, xp, off, L, dw, w2t, off_g, C, dxp, need_grad_in):
    for _ in range(reps):
        K._gemm_nt_shift(gz, xp, off, L, dw)
        if need_grad_in:
            K._gemm_tn_shift_acc(w2t, gz, off_g, L, C, dxp)


def _operands(caught, i):
    """Fused layer i's kernel arguments and one chunk's product operands: its padded
    samples ``xp``, row offsets ``off``, wide length ``L``, the column matrix written out
    (``cols[k] = xp[off[k] : off[k] + L]``) and a dL/dz of its shape (random: values do
    not change a product's time)."""
    fwd_args, bwd_args = caught[(i, "forward")], caught[(i, "backward")]
    x, w2, _, kh, kw, ph, pw, OH, OW, S, _, _, xps = fwd_args
    N, C, H, W = x.shape
    Sc, L, off, xp = _chunk0(N, C, H, W, kh, kw, ph, pw, OH, OW, S, xps)
    cols = np.stack([xp[o:o + L] for o in off])              # (K, L), written out
    gz = np.random.default_rng(0).standard_normal((w2.shape[0], L)).astype(x.dtype)
    return dict(fwd_args=fwd_args, bwd_args=bwd_args, Sc=Sc, L=L, off=off, xp=xp,
                cols=cols, gz=gz, w2=w2, w2t=bwd_args[1], need_grad_in=bwd_args[-1],
                C=C, off_g=K._grad_offsets(off, C, kh, kw))    # dL/dx's rows: (i, j, c)


def same_arithmetic(ops):
    """Check that npnet's blocked products and OpenBLAS's matmul of the written-out
    columns compute the same sums (float32 rounding apart), so that the table's columns
    time the same arithmetic; an AssertionError naming the product if not."""
    w2, w2t, xp, off, L, cols, gz, C, off_g = (
        ops[k] for k in ("w2", "w2t", "xp", "off", "L", "cols", "gz", "C", "off_g"))
    z = np.zeros((w2.shape[0], L), dtype=xp.dtype)
    _forward_products(1, w2, xp, off, L, z)
    dw = np.empty((w2.shape[0], off.size), dtype=xp.dtype)
    K._gemm_nt_shift(gz, xp, off, L, dw)
    dxp = np.zeros_like(xp)
    K._gemm_tn_shift_acc(w2t, gz, off_g, L, C, dxp)
    scattered = np.zeros(xp.shape, np.float64)     # OpenBLAS's product, then the scatter
    for k, row in enumerate(w2t @ gz):
        scattered[off_g[k]:off_g[k] + L] += row
    # float32 sums of at most a few hundred terms of size ~1 (dL/dx: 25 such sums
    # added per pixel): rounding stays far below 1e-4 of the values
    for name, ours, blas in (("forward", z, w2 @ cols), ("dL/dW", dw, gz @ cols.T),
                             ("dL/dx", dxp, scattered)):
        np.testing.assert_allclose(ours, blas, rtol=1e-4, atol=1e-4,
                                   err_msg=f"kernel_parts: the {name} products differ")


def _parts(ops, reps):
    """{(pass, what): (function, FLOP, samples)} for one fused layer: each function does
    its work for ``samples`` samples (the products: ``reps`` times one chunk's)."""
    x, w2, S = ops["fwd_args"][0], ops["w2"], ops["fwd_args"][9]
    bwd_args, need_grad_in, w2t = ops["bwd_args"], ops["need_grad_in"], ops["w2t"]
    Sc, L, off, xp, cols, gz = (ops[k] for k in ("Sc", "L", "off", "xp", "cols", "gz"))
    N, F = x.shape[0], w2.shape[0]
    n_chunks = -(-N // S)
    arg = ops["fwd_args"][11]                      # eval mode: no winners, arg has no rows
    eval_args = ops["fwd_args"][:11] + (arg[:0],) + ops["fwd_args"][12:]
    cols_all = np.tile(cols, (1, n_chunks))                  # every chunk's, side by side
    gz_all = np.tile(gz, (1, n_chunks))
    z = np.zeros((F, L), dtype=x.dtype)
    dw = np.empty((F, off.size), dtype=x.dtype)
    dxp, C, off_g = np.zeros_like(xp), ops["C"], ops["off_g"]
    zb, zb_all = np.empty((F, L), x.dtype), np.empty((F, L * n_chunks), x.dtype)
    db, gb, gb_all = np.empty_like(dw), np.empty((off.size, L), x.dtype), \
        np.empty((off.size, L * n_chunks), x.dtype)
    flop = 2 * F * off.size * L                               # one product, one chunk
    nb = 2 if need_grad_in else 1                             # backward's products

    # OpenBLAS in both orientations, C = A B and C.T = B.T A.T (its kernels favour one or
    # the other by shape); the faster one is printed
    zt, zt_all = np.empty((L, F), x.dtype), np.empty((L * n_chunks, F), x.dtype)
    dbt, gbt = np.empty((off.size, F), x.dtype), np.empty((L, off.size), x.dtype)
    gbt_all = np.empty((L * n_chunks, off.size), x.dtype)

    def blas_f(t=False):
        for _ in range(reps):
            np.matmul(cols.T, w2.T, out=zt) if t else np.matmul(w2, cols, out=zb)

    def blas_f_all(t=False):
        np.matmul(cols_all.T, w2.T, out=zt_all) if t else np.matmul(w2, cols_all, out=zb_all)

    def blas_b(t=False):
        for _ in range(reps):
            np.matmul(cols, gz.T, out=dbt) if t else np.matmul(gz, cols.T, out=db)
            if need_grad_in:
                np.matmul(gz.T, w2t.T, out=gbt) if t else np.matmul(w2t, gz, out=gb)

    def blas_b_all(t=False):
        np.matmul(cols_all, gz_all.T, out=dbt) if t else np.matmul(gz_all, cols_all.T, out=db)
        if need_grad_in:
            np.matmul(gz_all.T, w2t.T, out=gbt_all) if t else np.matmul(w2t, gz_all,
                                                                           out=gb_all)

    return {
        ("forward", "whole"): (lambda: K.conv_relu_pool_forward(*ops["fwd_args"]), 0, N),
        ("forward", "eval"): (lambda: K.conv_relu_pool_forward(*eval_args), 0, N),
        ("forward", "ours"): (lambda: _forward_products(reps, w2, xp, off, L, z),
                              flop * reps, Sc * reps),
        ("forward", "blas"): (blas_f, flop * reps, Sc * reps),
        ("forward", "blas", "t"): (lambda: blas_f(True), flop * reps, Sc * reps),
        ("forward", "blas_all"): (blas_f_all, flop * n_chunks, Sc * n_chunks),
        ("forward", "blas_all", "t"): (lambda: blas_f_all(True), flop * n_chunks,
                                       Sc * n_chunks),
        ("backward", "whole"): (lambda: K.conv_relu_pool_backward(*bwd_args), 0, N),
        ("backward", "ours"): (lambda: _backward_products(reps, gz, xp, off, L, dw, w2t,
                                                          off_g, C, dxp, need_grad_in),
                               nb * flop * reps, Sc * reps),
        ("backward", "blas"): (blas_b, nb * flop * reps, Sc * reps),
        ("backward", "blas", "t"): (lambda: blas_b(True), nb * flop * reps, Sc * reps),
        ("backward", "blas_all"): (blas_b_all, nb * flop * n_chunks, Sc * n_chunks),
        ("backward", "blas_all", "t"): (lambda: blas_b_all(True), nb * flop * n_chunks,
                                        Sc * n_chunks),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--reps", type=int, default=10,
                    help="one chunk's products per timed call (the kernel's operands stay "
                         "in cache, as in the kernel)")
    args = ap.parse_args(argv)

    import numba
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(0)
    with npnet.nn.init_generator(rng):
        model = npnet.lenet5(rng=rng)
    crit = npnet.CrossEntropyLoss()
    x = rng.standard_normal((args.batch, 1, 28, 28)).astype(np.float32)
    t = rng.integers(0, 10, args.batch)
    caught = _catch(model, crit, x, t)
    numba.set_num_threads(1)                      # one core: the products are per core
    rows = []
    with threadpool_limits(1):
        for i in (0, 1):
            ops = _operands(caught, i)
            same_arithmetic(ops)
            parts, need_grad_in = _parts(ops, args.reps), ops["need_grad_in"]
            for fn, _, _ in parts.values():       # warm: compile, fill the caches
                fn()
            times = {key: [] for key in parts}
            for _ in range(args.rounds):
                for key, (fn, _, _) in parts.items():
                    t0 = time.perf_counter()
                    fn()
                    times[key].append(time.perf_counter() - t0)
            us = {key: float(np.median(times[key])) / parts[key][2] * 1e6 for key in parts}
            gf = {key: parts[key][1] / parts[key][2] / us[key] / 1e3 for key in parts}
            for key in [k for k in us if len(k) == 3]:       # the faster orientation
                if us[key] < us[key[:2]]:
                    us[key[:2]], gf[key[:2]] = us[key], gf[key]
            for d in ("forward", "backward"):
                what = "" if d == "forward" else (" (dW, dx)" if need_grad_in else " (dW)")
                rows.append((f"conv{i + 1} {d}{what}", us[(d, "whole")], us.get((d, "eval")),
                             us[(d, "ours")],
                             gf[(d, "ours")], us[(d, "blas")], gf[(d, "blas")],
                             us[(d, "blas_all")], gf[(d, "blas_all")]))
    print(f"LeNet-5, batch {args.batch}, one core (Numba and OpenBLAS at 1 thread): "
          f"us per sample, medians of {args.rounds} rounds taken in turns")
    print(f"{'':<24}{'whole':>8}{'eval':>7}{'its products':>18}{'OpenBLAS, per chunk':>21}"
          f"{'OpenBLAS, one call':>21}{'the rest':>15}")
    for name, whole, ev, ours, g1, blas, g2, blas_all, g3 in rows:
        rest = whole - ours
        ev = f"{ev:>7.2f}" if ev is not None else f"{'':>7}"
        print(f"{name:<24}{whole:>8.2f}{ev}{ours:>9.2f} ({g1:>4.0f} GF/s){blas:>9.2f} "
              f"({g2:>4.0f} GF/s){blas_all:>9.2f} ({g3:>4.0f} GF/s){rest:>8.2f} "
              f"({rest / whole:.0%})")
    print("eval: the forward kernel as eval mode calls it, without the winners.  "
          "GF/s: GFLOP/s on one core, of the products' arithmetic on the wide positions.  "
          "OpenBLAS per chunk: the same products one by one; one call: all the batch's "
          "chunks' columns side by side, in one product; each the faster of C = A B and "
          "C.T = B.T A.T")


if __name__ == "__main__":
    main()
