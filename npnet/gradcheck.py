"""Numerical gradient check: compare a layer's backward with central differences.

For a scalar function L(theta), the central difference

    dL/dtheta_i ~= (L(theta + eps e_i) - L(theta - eps e_i)) / (2 eps)

has error O(eps**2) from the Taylor series plus O(u/eps) from rounding (u = 1.1e-16 in
float64), so eps = 1e-6 gives about 1e-10 on well-scaled values: that is why the check runs
in float64 (in float32, u = 6e-8 and the same formula is good to about 1e-3 only).

The scalar checked is L = sum(layer(x) * G) for a fixed G, so backward is called with
grad_out = G and every input and parameter gradient is compared.  G is random by default;
pass ``grad_out`` to check the layer with the gradient that really arrives at it in a
network (examples/backprop_step_by_step.py does, at every layer of LeNet-5).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .module import Module
from .tensor import realize


@dataclass
class TensorCheck:
    """The result for one tensor: the input ('input') or a parameter ('conv1.weight')."""
    name: str
    shape: tuple
    max_abs_err: float   # max |analytic - numeric|
    max_rel_err: float   # max |analytic - numeric| / max(|analytic|, |numeric|, tiny)
    passed: bool         # |analytic - numeric| <= atol + rtol * |numeric| everywhere
    # ||analytic - numeric|| / max(||analytic||, ||numeric||, tiny) over the whole tensor:
    # one number per tensor, not inflated by entries that are tiny (the usual figure: about
    # 1e-7 or less is right, 1e-2 or more is a bug)
    rel_err: float = float("nan")

    def __str__(self):
        return (f"{'ok  ' if self.passed else 'FAIL'} {self.name:<16} {str(self.shape):<18} "
                f"max abs err {self.max_abs_err:.2e}  max rel err {self.max_rel_err:.2e}")


class GradcheckError(AssertionError):
    """Raised by gradcheck when an analytic gradient disagrees with the numerical one."""


def gradcheck(layer: Module, x: np.ndarray, *, eps=1e-6, atol=1e-5, rtol=1e-3,
              mode="full", n_directions=8, rng=None, raise_on_fail=True, grad_out=None):
    """Check ``layer.backward`` against float64 central differences.

    Args:
        layer: any npnet layer or model (a Sequential, a class of your own) with float64
            parameters; it runs in training mode.  Its mode, gradients and buffers
            (running statistics) are as before when the check returns.  It must be deterministic (same x ->
            same y).
        x: float64 input batch.
        eps, atol, rtol: step and tolerances (torch.autograd.gradcheck's defaults).
        mode: 'full' perturbs every element of the input and of every parameter, one at a
            time (2 forwards per element); 'random' compares directional derivatives
            along ``n_directions`` random unit vectors (2 forwards per direction: cheap for
            large tensors, as Chainer's check).
        rng: np.random.Generator for G and the directions.
        raise_on_fail: raise GradcheckError with the report if any tensor fails.
        grad_out: the upstream gradient G, shaped like ``layer(x)`` (copied to float64);
            None (the default) draws G from ``rng``, standard normal.

    Returns:
        list of TensorCheck, one per tensor: 'input' first, then the named parameters.

    Non-differentiable points (ReLU at 0, max-pool ties) break any numerical check: draw
    inputs away from them (distinct values, no zeros).

    Checking a layer of your own::

        import numpy as np, npnet

        class Square(npnet.Layer):              # y = x**2, dy/dx = 2x
            def forward(self, x):
                self._cache = x
                return x * x
            def backward(self, grad_out):
                x, self._cache = self._cache, None
                return grad_out * 2 * x

        x = np.random.default_rng(0).normal(size=(3, 4))
        for row in npnet.gradcheck(Square(), x):
            print(row)
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.float64:
        raise ValueError("gradcheck: x must be a float64 array (float32 central differences "
                         f"are good to ~1e-3 only), got {getattr(x, 'dtype', type(x))}")
    named = list(layer.named_parameters())
    for name, p in named:
        if p.data.dtype != np.float64:
            raise ValueError(f"gradcheck: parameter '{name}' is {p.data.dtype}; build the "
                             "layer with dtype=np.float64")
    if mode not in ("full", "random"):
        raise ValueError(f"gradcheck: mode must be 'full' or 'random', got {mode!r}")
    rng = np.random.default_rng(0) if rng is None else rng
    # the check needs training mode and zeroed gradients, and its many forwards move
    # running statistics (batch norm's buffers): put all three back afterwards
    modes = _modes(layer)
    saved_grads = [p.grad.copy() for _, p in named]
    saved_buffers = [(b, b.copy()) for _, b in layer.named_buffers()]
    layer.train()
    try:
        return _check(layer, x.copy(), named, eps, atol, rtol, mode, n_directions, rng,
                      raise_on_fail, grad_out)
    finally:
        _restore_modes(modes)
        for (_, p), g in zip(named, saved_grads):
            p.grad[...] = g
        for live, kept in saved_buffers:
            live[...] = kept


def _modes(layer):
    """(module, training) for the layer and everything inside it."""
    return [(m, m.training) for m in layer.modules()]


def _restore_modes(modes):
    for layer, training in modes:
        layer.training = training


def _check(layer, x, named, eps, atol, rtol, mode, n_directions, rng, raise_on_fail,
           grad_out):

    def loss():
        return float(np.sum(np.asarray(layer(x)) * G))

    # analytic gradients from one forward + backward
    y = layer(x)
    if grad_out is None:
        G = rng.standard_normal(y.shape)
    else:
        G = np.array(grad_out, dtype=np.float64)    # a copy: the caller's array is untouched
        if G.shape != np.shape(y):
            raise ValueError(f"gradcheck: grad_out has shape {G.shape}, the layer's output "
                             f"has shape {np.shape(y)}")
    layer.zero_grad()
    grad_x = realize(layer.backward(G))
    if not isinstance(grad_x, np.ndarray) or grad_x.shape != x.shape:
        got = grad_x.shape if isinstance(grad_x, np.ndarray) else type(grad_x).__name__
        raise GradcheckError(f"gradcheck: {layer!r}.backward returned {got} for an input "
                             f"of shape {x.shape}: dL/dx must have the input's shape")
    tensors = [("input", x, np.array(grad_x, dtype=np.float64))]
    tensors += [(name, p.data, p.grad.copy()) for name, p in named]
    layer.zero_grad()

    report = []
    for name, t, analytic in tensors:
        if mode == "full":
            numeric = np.zeros_like(t)
            flat, nflat = t.reshape(-1), numeric.reshape(-1)   # views into the live tensor
            for i in range(flat.size):
                old = flat[i]
                flat[i] = old + eps
                plus = loss()
                flat[i] = old - eps
                minus = loss()
                flat[i] = old
                nflat[i] = (plus - minus) / (2 * eps)
            a, n = analytic, numeric
        else:
            a, n = np.empty(n_directions), np.empty(n_directions)
            for d in range(n_directions):
                v = rng.standard_normal(t.shape)
                v /= np.linalg.norm(v)
                old = t.copy()
                t += eps * v
                plus = loss()
                t[...] = old - eps * v
                minus = loss()
                t[...] = old
                a[d], n[d] = np.sum(analytic * v), (plus - minus) / (2 * eps)
        err = np.abs(a - n)
        scale = np.maximum(np.maximum(np.abs(a), np.abs(n)), 1e-12)
        norm = max(np.linalg.norm(a), np.linalg.norm(n), 1e-300)
        report.append(TensorCheck(
            name=name, shape=tuple(t.shape),
            max_abs_err=float(err.max(initial=0.0)),
            max_rel_err=float((err / scale).max(initial=0.0)),
            passed=bool(np.all(err <= atol + rtol * np.abs(n))),
            rel_err=float(np.linalg.norm(err) / norm) if err.size else 0.0))
    if raise_on_fail and not all(r.passed for r in report):
        raise GradcheckError("gradcheck failed:\n" + "\n".join(str(r) for r in report))
    return report
