"""npnet.testing: one call that tells whether a layer of your own is right.

    npnet.testing.assert_layer_correct(layer, x)

passes silently (returning the report) or raises ``GradcheckError``, an AssertionError
whose message names each fault in words, so it reads well as a pytest failure.  It checks:

1. **the gradients**: dL/dx and every parameter's gradient against float64 central
   differences (``npnet.gradcheck``): element by element for a tensor of at most
   ``full_max`` elements, along random directions for a larger one (``mode='auto'``);
2. **the contract of backward** (also ``npnet.gradcheck``): two backward calls give twice
   the parameter gradients (``+=``, not ``=``); backward leaves ``grad_out`` and the
   forward's input as they were; it returns a new array; the forward is deterministic;
   every gradient has its tensor's shape;
3. **dtypes**: float32 in gives float32 out, float64 gives float64, forward and backward;
4. **samples are independent**: changing sample j's input changes no other sample's
   output, unless a module declares ``mixes_samples = True`` (batch norm: its training
   forward uses the whole batch's statistics);
5. **eval mode keeps nothing** for a backward that will not come.

Kinks (ReLU at 0, max-pool ties: no derivative within the step) are reported, not
counted as wrong gradients; ``redraw_kinks=True`` moves the input away from them first.
docs/testing_your_layer.md shows each failure message on a deliberately broken layer.
"""
from __future__ import annotations

import copy

import numpy as np

from .autograd import tape_of
from .gradcheck import GradcheckError, GradcheckReport, check_arguments, run
from .module import Module
from .tensor import realize

__all__ = ["assert_layer_correct", "GradcheckError", "GradcheckReport"]

#: how many times ``redraw_kinks=True`` re-draws the input at most
REDRAWS = 3
#: samples whose input is changed, one at a time, by the independence check
SAMPLES_PROBED = 4


def assert_layer_correct(layer: Module, x: np.ndarray, *, eps=1e-6, atol=1e-5, rtol=1e-3,
                         mode="auto", full_max=1000, n_directions=8, rng=None,
                         grad_out=None, redraw_kinks=False) -> GradcheckReport:
    """Raise ``GradcheckError`` (an AssertionError) unless ``layer`` is right at ``x``.

    Args:
        layer: an npnet layer (built in, or your ``npnet.Layer`` subclass with forward and
            backward) or a model (an ``nn.Module`` that writes only forward).  It may be
            float32 or float64: the gradient check runs on the layer itself if it is
            float64 (so its arrays are perturbed as they are, whatever their memory order),
            else on a float64 copy.  Mode, gradients and buffers are as before afterwards.
        x: an input batch (float32 or float64, N first).  Left as it was.
        eps, atol, rtol: the step of the central differences and the tolerance
            |backward - numerical| <= atol + rtol * |numerical| (torch's defaults; the
            report says why they fit float64).
        mode: 'auto' (default: each element of a tensor of at most ``full_max`` elements,
            ``n_directions`` random directions for a larger one), 'full' or 'random'.
        rng: np.random.Generator for G, the directions and the re-draws (default seed 0).
        grad_out: the upstream gradient G (default: drawn from ``rng``).
        redraw_kinks: if True, when elements sit at a kink, move them (up to 3 times) by
            about a tenth of x's spread and check again; the report says so.

    Returns:
        the GradcheckReport of the checks (print it to read it).
    """
    if not isinstance(layer, Module):
        raise TypeError(f"assert_layer_correct: layer must be an npnet Module (a Layer "
                        f"subclass or an nn.Module model), got {type(layer).__name__}")
    if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64):
        got = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
        raise TypeError(f"assert_layer_correct: x must be a float32 or float64 numpy array, "
                        f"got {got}")
    if not isinstance(redraw_kinks, bool):
        raise TypeError(f"assert_layer_correct: redraw_kinks must be True or False, "
                        f"got {redraw_kinks!r}")
    rng = np.random.default_rng(0) if rng is None else rng
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"assert_layer_correct: rng must be a np.random.Generator, "
                        f"got {type(rng).__name__}")
    x64 = x if x.dtype == np.float64 else x.astype(np.float64)      # keeps memory order
    state = [p.data for p in layer.parameters()] + layer.buffers()
    if all(a.dtype == np.float64 for a in state if a.dtype.kind == "f"):
        layer64 = layer
    else:
        layer64 = copy.deepcopy(layer).to(np.float64)
    check_arguments(layer64, x64, mode)

    def gradients(x64):
        return run(layer64, x64, eps, atol, rtol, mode, n_directions, full_max, rng, grad_out)

    report = gradients(x64)
    redraws = 0
    while redraw_kinks and redraws < REDRAWS and any(r.n_kinks for r in report):
        x64, moved = _away_from_kinks(x64, report, rng)
        redraws += 1
        report = gradients(x64)
        report.notes.append(f"redraw_kinks: {moved} moved away from kinks, "
                            f"{redraws} time{'s' if redraws > 1 else ''}; the checks ran "
                            "at the new x")
    if any(r.n_kinks for r in report):
        report.notes.append("kinks: the function has no derivative there, so those elements "
                            "were not compared; draw x away from them (distinct values, no "
                            "zeros) or pass redraw_kinks=True")
    _check_dtypes(layer, x64, report, rng)
    _check_samples(layer64, x64, report, rng)
    _check_eval(layer64, x64, report)
    if not report.passed:
        raise GradcheckError(str(report), report)
    return report


def _away_from_kinks(x, report, rng):
    """A copy of x with the elements at a kink moved by ~0.1 of x's spread (all of x if
    the kinks were found along random directions or in a parameter)."""
    x = x.copy()
    scale = float(np.std(x)) or 1.0
    first = report[0]
    if first.name == "input" and first.mode == "full" and first.n_kinks:
        where = tuple(np.array([k[0] for k in first.kinks]).T)
        moved = f"{first.n_kinks} element{'s' if first.n_kinks > 1 else ''} of x"
    else:
        where = (slice(None),) * x.ndim
        moved = "every element of x"
    shape = x[where].shape
    x[where] += scale * rng.uniform(0.05, 0.15, shape) * rng.choice([-1.0, 1.0], shape)
    return x, moved


def _check_dtypes(layer, x, report, rng):
    """float32 in -> float32 out (and float64 -> float64), in forward and in backward,
    on copies of the layer converted with ``.to(dtype)``."""
    for dt in (np.float32, np.float64):
        name = np.dtype(dt).name
        m = copy.deepcopy(layer).to(dt).train()
        try:
            y = np.asarray(realize(m(x.astype(dt))))
        except (ValueError, TypeError) as e:       # e.g. an array kept outside self.params
            report.fault("dtype", f"converted with .to(np.{name}), the layer refused a "
                         f"{name} input: {type(e).__name__}: {e}")
            continue
        if y.dtype != dt:
            report.fault("dtype", f"a {name} input gave a {y.dtype} output; a layer "
                         "keeps its input's dtype (a float64 constant or np.float64 scalar "
                         "in the arithmetic upcasts float32)")
            continue
        grad_in = realize(m.backward(rng.standard_normal(y.shape).astype(dt)))
        if isinstance(grad_in, np.ndarray) and grad_in.dtype != dt:
            report.fault("dtype", f"with a {name} input, backward returned a "
                         f"{grad_in.dtype} dL/dx; it must be {name}, as the input")
        for pname, p in m.named_parameters():
            if p.grad.dtype != dt:
                report.fault("dtype", f"with {name} parameters, the gradient of "
                             f"'{pname}' became {p.grad.dtype}")


def _check_samples(layer, x, report, rng):
    """Changing sample j's input (j < 4) must leave every other sample's output as it
    was, bit for bit up to rounding, unless a module declares mixes_samples."""
    mixers = [f"{name or 'the layer'} ({type(m).__name__})"
              for name, m in layer.named_modules() if m.mixes_samples]
    if mixers:
        report.notes.append(f"samples: independence not checked: {mixers[0]} declares "
                            "mixes_samples = True (its training output for a sample "
                            "depends on the others, as batch norm's does)")
        return
    if any(f.kind == "not deterministic" for f in report.faults):
        report.notes.append("samples: independence not checked: the forward is not "
                            "deterministic")
        return
    N = x.shape[0] if x.ndim else 0
    if N < 2:
        report.notes.append("samples: independence not checked: a batch of one sample")
        return
    m = copy.deepcopy(layer).train()
    y = np.asarray(realize(m(x))).copy()
    if y.ndim == 0 or y.shape[0] != N:
        report.notes.append(f"samples: independence not checked: the output {y.shape} has "
                            f"no batch dimension of {N}")
        return
    scale = float(np.std(x)) or 1.0
    # rounding only: a sample computed on its own gives the same bits; allow 1e-12
    tol = 1e-12 * max(float(np.max(np.abs(y))), 1.0)
    for j in range(min(N, SAMPLES_PROBED)):
        x2 = x.copy()
        x2[j] += scale * rng.standard_normal(x2[j].shape)
        y2 = np.asarray(realize(m(x2)))
        others = np.arange(N) != j
        diff = np.abs(y2[others] - y[others])
        if diff.size and diff.max() > tol:
            i = int(np.arange(N)[others][np.unravel_index(np.argmax(diff), diff.shape)[0]])
            report.fault("samples", f"sample {i}'s output changed (by up to "
                         f"{diff.max():.2g}) when only sample {j}'s input did; each sample "
                         "must be computed on its own (a sum or mean over axis 0?).  A layer "
                         "that mixes samples on purpose, as batch norm, declares "
                         "mixes_samples = True")
            return


def _check_eval(layer, x, report):
    """In eval mode a forward keeps nothing for backward (no _cache, no record)."""
    m = copy.deepcopy(layer).eval()
    for mod in m.modules():
        mod._cache = None
    m(x)
    kept = [name or type(mod).__name__ for name, mod in m.named_modules()
            if mod.__dict__.get("_cache") is not None]
    if kept or (not m._is_layer and tape_of(m) is not None):
        report.fault("eval cache", f"in eval mode forward kept state for "
                     f"backward (in the _cache of {', '.join(kept) or 'the model'}); eval "
                     "needs no backward: keep it only if self.training")
