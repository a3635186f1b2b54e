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

Besides the numbers, the check holds the backward to the layer contract
(npnet/layers/base.py), because a backward can be right on its first call and still wrong
in training:

* **accumulation**: a second forward + backward must *add* the same gradients again
  (``+=``), so the parameter gradients double; an ``=`` leaves them as they were;
* **arguments left alone**: backward gets a copy of G and must not change it, nor the
  forward's input; what it returns is a new array, not one it reuses or keeps;
* **kinks**: where L is not differentiable within the step (ReLU at 0, a max-pool tie),
  the one-sided differences (L(+eps) - L) / eps and (L - L(-eps)) / eps disagree.  Such an
  element has no derivative to check: it is reported as a kink, not as a wrong gradient.

The perturbation goes into the very arrays the layer reads (the live parameters, the
input), element by element through their own indices, so a Fortran-ordered weight or a
strided view is checked as it is, never through a copy.  ``npnet.testing.
assert_layer_correct`` adds the checks that need more than one float64 layer (dtypes, the
independence of samples, eval mode) and raises with the report.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .module import Module
from .tensor import realize

__all__ = ["gradcheck", "GradcheckError", "GradcheckReport", "TensorCheck", "Fault"]

U64 = np.finfo(np.float64).eps / 2        # 1.1e-16: float64's unit roundoff
#: kinks listed per tensor in a report (the count is always given)
SHOWN_KINKS = 4


@dataclass
class TensorCheck:
    """The result for one tensor: the input ('input') or a parameter ('conv1.weight').

    The errors are over the elements (or, in 'random' mode, the directions) compared:
    those at a kink are left out and listed in ``kinks``."""
    name: str
    shape: tuple
    max_abs_err: float   # max |analytic - numeric|
    max_rel_err: float   # max |analytic - numeric| / max(|analytic|, |numeric|, tiny)
    passed: bool         # |analytic - numeric| <= atol + rtol * |numeric| everywhere
    # ||analytic - numeric|| / max(||analytic||, ||numeric||, tiny) over the whole tensor:
    # one number per tensor, not inflated by entries that are tiny (the usual figure: about
    # 1e-7 or less is right, 1e-2 or more is a bug)
    rel_err: float = float("nan")
    mode: str = "full"               # 'full' (each element) or 'random' (directions)
    worst: tuple | int | None = None  # the index (or direction) furthest past its tolerance
    worst_analytic: float = float("nan")   # backward's value there
    worst_numeric: float = float("nan")    # the central difference there
    compared: int = 0                # elements or directions compared
    # (index, backward's value, left derivative, right derivative) of every kink
    kinks: list = field(default_factory=list)

    @property
    def n_kinks(self) -> int:
        return len(self.kinks)

    def __str__(self):
        line = (f"{'ok  ' if self.passed else 'FAIL'} {self.name:<16} {str(self.shape):<18} "
                f"max abs err {self.max_abs_err:.2e}  max rel err {self.max_rel_err:.2e}")
        if self.n_kinks:
            line += f"  ({self.n_kinks} at a kink, not compared)"
        return line

    def where(self, i) -> str:
        """'weight[1, 2]' for an element, 'input along direction 3' in random mode."""
        if self.mode == "random":
            return f"{self.name} along random direction {i}"
        return f"{self.name}[{', '.join(str(int(k)) for k in i)}]"

    def details(self) -> str:
        """The line of ``str``, then the worst element and the kinks, for a report."""
        lines = [str(self)]
        if self.worst is not None:
            lines.append(f"       worst: {self.where(self.worst)}: backward "
                         f"{self.worst_analytic:.6g}, numerical {self.worst_numeric:.6g}")
        for i, a, left, right in self.kinks[:SHOWN_KINKS]:
            left, right, a = left + 0.0, right + 0.0, a + 0.0     # + 0.0: -0 prints as 0
            lines.append(f"       kink:  {self.where(i)}: the slope is {left:.4g} from the "
                         f"left and {right:.4g} from the right ({_side(a, left, right)} "
                         f"{a:.4g})")
        if self.n_kinks > SHOWN_KINKS:
            more = self.n_kinks - SHOWN_KINKS
            lines.append(f"       ... and {more} more kink{'s' if more > 1 else ''}")
        return "\n".join(lines)


def _side(a, left, right) -> str:
    """Which one-sided derivative backward chose at a kink (any choice between is valid)."""
    tol = 1e-6 * (1 + abs(left) + abs(right))
    if abs(a - left) <= tol:
        return "backward gives the left one,"
    if abs(a - right) <= tol:
        return "backward gives the right one,"
    if min(left, right) - tol <= a <= max(left, right) + tol:
        return "backward gives a value between them,"
    return "backward gives neither:"


@dataclass
class Fault:
    """A broken rule of the layer contract, in words: ``kind`` names the rule
    ('accumulation', 'grad_out modified', ...), ``message`` says what was seen."""
    kind: str
    message: str

    def __str__(self):
        return self.message


class GradcheckReport(list):
    """What a check found: a list of :class:`TensorCheck` (the input first, then the
    parameters), with the contract ``faults``, ``notes`` (what was not checked, and why)
    and the ``tolerance`` with its justification.  ``print(report)`` reads as a report."""

    def __init__(self, who: str, rows=()):
        super().__init__(rows)
        self.who = who
        self.faults: list[Fault] = []
        self.notes: list[str] = []
        self.tolerance = ""

    def fault(self, kind: str, message: str) -> None:
        """Note a broken rule (once: the second backward of the check sees it again)."""
        if all(f.message != message for f in self.faults):
            self.faults.append(Fault(kind, message))

    @property
    def passed(self) -> bool:
        return not self.faults and all(r.passed for r in self)

    def problems(self) -> list[str]:
        """One sentence per problem: each fault, then each tensor whose gradient is wrong."""
        out = [str(f) for f in self.faults]
        for r in self:
            if not r.passed:
                what = "dL/dx" if r.name == "input" else f"the gradient of '{r.name}'"
                out.append(f"{what} is wrong: at {r.where(r.worst)} backward gives "
                           f"{r.worst_analytic:.6g} but the numerical derivative is "
                           f"{r.worst_numeric:.6g} (max abs err {r.max_abs_err:.1e}, "
                           f"max rel err {r.max_rel_err:.1e})")
        return out

    def __str__(self):
        lines = [f"{self.who}: {'passed' if self.passed else 'FAILED'}"]
        lines += [f"  - {p}" for p in self.problems()]
        if len(self):
            lines.append(f"  gradients against float64 central differences; {self.tolerance}")
            lines += ["    " + r.details().replace("\n", "\n    ") for r in self]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    __repr__ = __str__


class GradcheckError(AssertionError):
    """Raised when a check fails; its message is the report, ``report`` the object."""

    def __init__(self, message: str, report: GradcheckReport | None = None):
        super().__init__(message)
        self.report = report


def gradcheck(layer: Module, x: np.ndarray, *, eps=1e-6, atol=1e-5, rtol=1e-3,
              mode="full", n_directions=8, rng=None, raise_on_fail=True, grad_out=None,
              full_max=1000):
    """Check ``layer.backward`` against float64 central differences, and its contract.

    Args:
        layer: any npnet layer or model (a Sequential, a class of your own) with float64
            parameters; it runs in training mode.  Its mode, gradients and buffers
            (running statistics) are as before when the check returns.  It must be
            deterministic (same x -> same y).
        x: float64 input batch.  It is perturbed in place, element by element, and put
            back exactly (a read-only array is checked through a copy).
        eps, atol, rtol: step and tolerances (torch.autograd.gradcheck's defaults).
        mode: 'full' perturbs every element of the input and of every parameter, one at a
            time (2 forwards per element); 'random' compares directional derivatives
            along ``n_directions`` random unit vectors (2 forwards per direction: cheap for
            large tensors, as Chainer's check); 'auto' takes 'full' for a tensor of at most
            ``full_max`` elements and 'random' for a larger one.
        rng: np.random.Generator for G and the directions.
        raise_on_fail: raise GradcheckError with the report if anything fails.
        grad_out: the upstream gradient G, shaped like ``layer(x)`` (copied to float64);
            None (the default) draws G from ``rng``, standard normal.

    Returns:
        a GradcheckReport: a list of TensorCheck, one per tensor ('input' first, then the
        named parameters), with ``.faults`` (broken contract rules: gradients assigned
        instead of accumulated, grad_out or the input modified, an array returned that
        is reused) and ``.passed``.

    Non-differentiable points (ReLU at 0, max-pool ties) are found by their one-sided
    differences and left out of the comparison, listed as kinks in the report.

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
    check_arguments(layer, x, mode)
    rng = np.random.default_rng(0) if rng is None else rng
    report = run(layer, x, eps, atol, rtol, mode, n_directions, full_max, rng, grad_out)
    if raise_on_fail and not report.passed:
        raise GradcheckError("gradcheck failed: " + str(report), report)
    return report


def run(layer, x, eps, atol, rtol, mode, n_directions, full_max, rng, grad_out):
    """The check itself, for gradcheck and npnet.testing: in training mode, with the
    layer's state put back afterwards; a read-only x is perturbed through a copy."""
    with _kept_state(layer):
        layer.train()
        return _check(layer, x if x.flags.writeable else x.copy(), eps, atol, rtol, mode,
                      n_directions, full_max, rng, grad_out)


def check_arguments(layer, x, mode):
    """Refuse what the check cannot use: a float32 input or parameter, an unknown mode."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float64:
        raise ValueError("gradcheck: x must be a float64 array (float32 central differences "
                         f"are good to ~1e-3 only), got {getattr(x, 'dtype', type(x))}")
    for name, p in layer.named_parameters():
        if p.data.dtype != np.float64:
            raise ValueError(f"gradcheck: parameter '{name}' is {p.data.dtype}; build the "
                             "layer with dtype=np.float64")
    if mode not in ("full", "random", "auto"):
        raise ValueError(f"gradcheck: mode must be 'full', 'random' or 'auto', got {mode!r}")


class _kept_state:
    """The check needs training mode and zeroed gradients, and its many forwards move
    running statistics (batch norm's buffers): put all three back afterwards, the very
    gradient arrays too (a faulty backward may have replaced one)."""

    def __init__(self, layer):
        self.layer = layer

    def __enter__(self):
        mods = list(self.layer.modules())
        self.modes = [(m, m.training) for m in mods]
        self.grads = [(m, k, g, g.copy()) for m in mods for k, g in m.grads.items()]
        self.buffers = [(b, b.copy()) for _, b in self.layer.named_buffers()]

    def __exit__(self, *exc):
        for m, training in self.modes:
            m.training = training
        for m, k, g, kept in self.grads:
            g[...] = kept
            m.grads[k] = g
        for live, kept in self.buffers:
            live[...] = kept
        return False


def _grad_slots(layer):
    """[(name, module, key)] of every parameter, named as named_parameters() names them."""
    out, seen = [], set()
    for mod_name, m in layer.named_modules():
        for k, v in m.params.items():
            if v is not None and id(v) not in seen:
                seen.add(id(v))
                out.append((f"{mod_name}.{k}" if mod_name else k, m, k))
    return out


def _forward(layer, x):
    return np.asarray(realize(layer(x)))


def _forward_leaving(layer, x, x_kept, report):
    """layer(x), refusing a forward that changes x (then nothing can be checked)."""
    y = _forward(layer, x)
    _refuse_changed_x(x, x_kept, report, "forward changed its input x in place; a layer "
                      "must leave x as it got it (the layer below may keep it for its own "
                      "backward)")
    return y


def _refuse_changed_x(x, x_kept, report, message):
    """If a call changed x in place, put x back, note the fault and stop the check."""
    if not np.array_equal(x, x_kept, equal_nan=True):
        x[...] = x_kept
        report.fault("input modified", message)
        raise GradcheckError(str(report), report)


def _shares(a, others) -> list:
    return [what for what, o in others if isinstance(o, np.ndarray) and np.shares_memory(a, o)]


def _one_backward(layer, x, G, report, slots):
    """forward + backward(copy of G): dL/dx, each parameter's gradient after it, and y.
    Notes in ``report`` the faults seen: G or x changed, a gradient array replaced."""
    x_kept = x.copy()
    y = _forward_leaving(layer, x, x_kept, report)
    grads_before = [m.grads[k] for _, m, k in slots]
    G_arg = G.copy()                 # what backward gets; G stays what the numerics use
    grad_in = realize(layer.backward(G_arg))
    if not isinstance(grad_in, np.ndarray) or grad_in.shape != x.shape:
        got = grad_in.shape if isinstance(grad_in, np.ndarray) else type(grad_in).__name__
        raise GradcheckError(f"gradcheck: {layer!r}.backward returned {got} for an input "
                             f"of shape {x.shape}: dL/dx must have the input's shape", report)
    _refuse_changed_x(x, x_kept, report, "backward changed the forward's input x in place; "
                      "read it, never write it")
    if not np.array_equal(G_arg, G, equal_nan=True):
        report.fault("grad_out modified", f"backward changed its argument grad_out "
                     "in place (write grad_out * mask, not grad_out *= mask: the caller may "
                     "hand the same array to another layer)")
    for (name, m, k), before in zip(slots, grads_before):
        g = m.grads[k]
        if not isinstance(g, np.ndarray) or g.shape != m.params[k].shape:
            got = g.shape if isinstance(g, np.ndarray) else type(g).__name__
            report.fault("gradient shape", f"the gradient of '{name}' has shape "
                         f"{got}, the parameter {m.params[k].shape}: a gradient has the "
                         "shape of its tensor")
            raise GradcheckError(str(report), report)
        if g is not before:
            report.fault("gradient replaced", f"backward replaced the array "
                         f"grads['{k}'] of '{name}' with a new one instead of adding into it "
                         "(+=): an optimizer holds the old array and would never see this "
                         "gradient")
    return grad_in, {name: m.grads[k].copy() for name, m, k in slots}, y


def _check(layer, x, eps, atol, rtol, mode, n_directions, full_max, rng, grad_out):
    report = GradcheckReport(repr(layer) if layer._is_layer else type(layer).__name__)
    slots = _grad_slots(layer)
    y = _forward_leaving(layer, x, x.copy(), report)     # for G's shape
    if grad_out is None:
        G = rng.standard_normal(y.shape)
    else:
        G = np.array(grad_out, dtype=np.float64)    # a copy: the caller's array is untouched
        if G.shape != np.shape(y):
            raise ValueError(f"gradcheck: grad_out has shape {G.shape}, the layer's output "
                             f"has shape {np.shape(y)}")

    # analytic gradients from one forward + backward, then a second one: it must add as
    # much again (accumulation), give the same y (determinism), and leave the first
    # dL/dx as it was (backward returns a new array each time)
    layer.zero_grad()
    grad_in, grads1, y1 = _one_backward(layer, x, G, report, slots)
    kept_in, kept_y = grad_in.copy(), y1.copy()
    own = [("the forward's input x", x), ("the forward's output y", y1)]
    own += [(f"parameter '{n}'", m.params[k]) for n, m, k in slots]
    own += [(f"the gradient of '{n}'", m.grads[k]) for n, m, k in slots]
    shared = _shares(grad_in, own)
    if shared:
        report.fault("not fresh", f"backward returned an array that shares memory "
                     f"with {shared[0]}; return a new array")
    grad_in2, grads2, y2 = _one_backward(layer, x, G, report, slots)
    deterministic = np.allclose(y2, kept_y, rtol=1e-10, atol=1e-300, equal_nan=True)
    if not deterministic:
        report.fault("not deterministic", f"two forwards of the same x gave "
                     f"different outputs (by up to {np.max(np.abs(y2 - kept_y)):.2g}): a "
                     "numerical check needs y = f(x), so fix the randomness (e.g. reseed a "
                     "Dropout at every forward)")
    if not np.array_equal(grad_in, kept_in, equal_nan=True) or (
            grad_in.size and np.shares_memory(grad_in, grad_in2)):
        report.fault("not fresh", f"backward returns an array it reuses: the dL/dx "
                     "of the first call changed when backward ran again; return a new array "
                     "each call")
    for name, g1 in grads1.items():
        if deterministic and np.any(g1 != 0) and not np.allclose(
                grads2[name], 2 * g1, rtol=1e-9, atol=1e-12 * float(np.max(np.abs(g1)))):
            # a deterministic backward adds the same bits twice: g + g = 2g exactly; the
            # tolerance only forgives a layer that sums in another order the second time
            if np.allclose(grads2[name], g1, rtol=1e-9, atol=0):
                report.fault("accumulation", f"backward assigns the gradient of "
                             f"'{name}' (=) instead of adding into it (+=): after two "
                             "backward calls it holds one call's gradient, not their sum")
            else:
                report.fault("accumulation", f"two backward calls should give twice "
                             f"the gradient of '{name}' of one call, and gave another value: "
                             "backward must add (+=) its own gradient, nothing else")
    layer.zero_grad()

    def loss():
        return float(np.sum(_forward(layer, x) * G))

    L0 = loss()
    # rounding: each L is a sum of products y*G, rounded to about u * sum|y*G|; divided
    # by the step, that is the floor of any finite difference
    rounding = U64 * float(np.sum(np.abs(y1 * G))) / eps
    report.tolerance = (
        f"tolerance |backward - numerical| <= atol + rtol * |numerical| = {atol:g} + "
        f"{rtol:g} * |numerical|\n  why: with eps = {eps:g}, a float64 central difference "
        f"errs by ~eps**2 = {eps * eps:.0e} (truncation) plus ~u * sum|y*G| / eps = "
        f"{rounding:.0e} here (rounding, u = {U64:.1e}): a right gradient is far inside")
    tensors = [("input", x, np.asarray(grad_in, dtype=np.float64))]
    tensors += [(name, m.params[k], grads1[name]) for name, m, k in slots]
    for name, t, analytic in tensors:
        t_mode = mode if mode != "auto" else ("full" if t.size <= full_max else "random")
        report.append(_compare(name, t, analytic, t_mode, loss, L0, eps, atol, rtol,
                               n_directions, rng, deterministic))
    return report


def _compare(name, t, analytic, mode, loss, L0, eps, atol, rtol, n_directions, rng,
             find_kinks):
    """One tensor: backward's gradient against central differences, kinks left out."""
    if mode == "full":
        a = analytic
        plus, minus = np.empty(t.shape), np.empty(t.shape)
        for i in np.ndindex(t.shape):       # t's own indices: any memory order, any view
            old = t[i]
            t[i] = old + eps
            plus[i] = loss()
            t[i] = old - eps
            minus[i] = loss()
            t[i] = old                      # the very value back, bit for bit
    else:
        a, plus, minus = np.empty(n_directions), np.empty(n_directions), np.empty(n_directions)
        old = t.copy()
        for d in range(n_directions):
            v = rng.standard_normal(t.shape)
            v /= np.linalg.norm(v)
            t += eps * v
            plus[d] = loss()
            t[...] = old - eps * v
            minus[d] = loss()
            t[...] = old
            a[d] = np.sum(analytic * v)
    n = (plus - minus) / (2 * eps)
    right, left = (plus - L0) / eps, (L0 - minus) / eps      # the one-sided slopes
    kink = np.zeros(n.shape, bool)
    if find_kinks:      # (a random forward makes every element look like one: not then)
        kink = np.abs(right - left) > atol + rtol * np.maximum(np.abs(right), np.abs(left))
    ok = ~kink
    err = np.where(ok, np.abs(a - n), 0.0)
    room = atol + rtol * np.abs(n)
    scale = np.maximum(np.maximum(np.abs(a), np.abs(n)), 1e-12)
    norm = max(np.linalg.norm(a[ok]), np.linalg.norm(n[ok]), 1e-300) if ok.any() else 1.0
    worst = None
    if ok.any():
        w = np.unravel_index(np.argmax(np.where(ok, err / room, -1.0)), n.shape)
        worst = int(w[0]) if mode == "random" else tuple(int(k) for k in w)
    kinks = [tuple(int(k) for k in i) if mode == "full" else int(i[0])
             for i in np.argwhere(kink)]
    return TensorCheck(
        name=name, shape=tuple(t.shape),
        max_abs_err=float(err.max(initial=0.0)),
        max_rel_err=float((err / scale).max(initial=0.0)),
        passed=bool(np.all(err <= room)),
        rel_err=float(np.linalg.norm(err) / norm) if err.size else 0.0,
        mode=mode, worst=worst,
        worst_analytic=float(a[worst]) if worst is not None else float("nan"),
        worst_numeric=float(n[worst]) if worst is not None else float("nan"),
        compared=int(ok.sum()),
        kinks=[(i, float(a[i]), float(left[i]), float(right[i])) for i in kinks])
