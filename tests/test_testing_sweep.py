"""No false alarms: assert_layer_correct passes every right layer, whatever its geometry
and whatever the memory order of its parameters and of its input.

One seeded sweep draws a few hundred layers (every built-in kind, a Sequential, a layer of
one's own), each with a random geometry, float32 or float64 parameters, and parameters and
input laid out C-ordered, Fortran-ordered, as strided views into a larger array, or
reversed (negative strides).  The cases are counted, per kind and per layout, so that the
sweep cannot quietly shrink.  Shapes are small (a few dozen elements) to keep it fast.
"""
from collections import Counter

import numpy as np

import npnet
from npnet.testing import assert_layer_correct

CASES = 300
LAYOUTS = ("C", "F", "strided", "reversed")


def laid_out(a: np.ndarray, layout: str) -> np.ndarray:
    """The same values as ``a`` in another memory layout (a view where it is one)."""
    if layout == "C" or a.ndim == 0:
        return np.ascontiguousarray(a)
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "strided":               # a view into a larger array: rows have gaps
        big = np.zeros(a.shape[:-1] + (a.shape[-1] + 3,), a.dtype)
        big[..., 1:-2] = a
        return big[..., 1:-2]
    flipped = np.ascontiguousarray(a[..., ::-1])        # reversed: negative strides
    return flipped[..., ::-1]


class Scale(npnet.Layer):
    """A layer of one's own: y = x * w + b, with w and b of the feature shape."""

    def __init__(self, shape, rng):
        super().__init__()
        self.weight = npnet.Parameter(rng.uniform(0.5, 1.5, shape))
        self.bias = npnet.Parameter(rng.standard_normal(shape))

    def forward(self, x):
        self._cache = x if self.training else None
        return x * self.weight + self.bias

    def backward(self, grad_out):
        x, self._cache = self._cache, None
        self.grads["weight"] += (grad_out * x).sum(axis=0)
        self.grads["bias"] += grad_out.sum(axis=0)
        return grad_out * self.weight


def draw_case(r: np.random.Generator):
    """(kind, layer, input shape): one right layer with a random geometry."""
    N = int(r.integers(2, 4))
    kind = str(r.choice(["Linear", "Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
                         "ReLU", "Tanh", "Sigmoid", "LeakyReLU", "BatchNorm", "Flatten",
                         "fused", "Sequential", "Scale"]))
    dtype = np.float32 if r.random() < 0.3 else np.float64
    if kind == "Linear":
        fin, fout = int(r.integers(1, 5)), int(r.integers(1, 4))
        return kind, npnet.Linear(fin, fout, bias=bool(r.random() < 0.7), dtype=dtype,
                                  rng=r), (N, fin)
    if kind == "Conv2d":
        C, F, k = int(r.integers(1, 3)), int(r.integers(1, 3)), int(r.integers(1, 4))
        s, p = int(r.integers(1, 3)), int(r.integers(0, 2))
        H, W = (int(r.integers(max(k - 2 * p, 1), 6)) for _ in range(2))
        return kind, npnet.Conv2d(C, F, k, stride=s, padding=p, bias=bool(r.random() < 0.7),
                                  dtype=dtype, rng=r), (2, C, H, W)
    if kind in ("MaxPool2d", "AvgPool2d"):
        k = int(r.integers(1, 4))
        s, p = int(r.integers(1, 3)), int(r.integers(0, k // 2 + 1))
        H, W = (int(r.integers(max(k - 2 * p, 1), 6)) for _ in range(2))
        cls = getattr(npnet, kind)
        return kind, cls(k, stride=s, padding=p), (2, int(r.integers(1, 3)), H, W)
    if kind == "AdaptiveAvgPool2d":
        out = (int(r.integers(1, 4)), int(r.integers(1, 4)))
        return kind, npnet.AdaptiveAvgPool2d(out), (2, 2, int(r.integers(3, 6)),
                                                    int(r.integers(3, 6)))
    if kind in ("ReLU", "Tanh", "Sigmoid", "LeakyReLU"):
        act = npnet.LeakyReLU(float(r.uniform(0.01, 0.5))) if kind == "LeakyReLU" \
            else getattr(npnet, kind)()
        return kind, act, (N,) + tuple(int(d) for d in r.integers(1, 4, 2))
    if kind == "BatchNorm":
        C = int(r.integers(1, 4))
        if r.random() < 0.5:
            return "BatchNorm1d", npnet.BatchNorm1d(C, affine=bool(r.random() < 0.7),
                                                    dtype=dtype), (4, C)
        return "BatchNorm2d", npnet.BatchNorm2d(C, affine=bool(r.random() < 0.7),
                                                dtype=dtype), (2, C, 2, 3)
    if kind == "Flatten":
        return kind, npnet.Flatten(), (N, int(r.integers(1, 4)), int(r.integers(1, 4)))
    if kind == "fused":
        C, k = int(r.integers(1, 3)), int(r.integers(1, 4))
        conv = npnet.Conv2d(C, 2, k, padding=int(r.integers(0, 2)), dtype=dtype, rng=r)
        H, W = (int(r.integers(k + 1, k + 4)) for _ in range(2))
        return "ConvReLUMaxPool2d", npnet.ConvReLUMaxPool2d(conv), (2, C, H, W)
    if kind == "Sequential":
        fin = int(r.integers(1, 4))
        return kind, npnet.Sequential(npnet.Linear(fin, 3, dtype=dtype, rng=r), npnet.Tanh(),
                                      npnet.Linear(3, 2, dtype=dtype, rng=r)), (N, fin)
    shape = tuple(int(d) for d in r.integers(1, 4, int(r.integers(1, 3))))
    return kind, Scale(shape, r).to(dtype), (N,) + shape


def test_no_false_alarm_over_hundreds_of_right_layers(draw):
    r = np.random.default_rng(12)
    kinds, param_layouts, input_layouts, dtypes = Counter(), Counter(), Counter(), Counter()
    for case in range(CASES):
        kind, layer, shape = draw_case(r)
        for m in layer.modules():                  # every parameter in a random layout
            for name in list(m.params):
                layout = LAYOUTS[int(r.integers(0, 4))]
                m.params[name] = laid_out(m.params[name], layout)
                m.grads[name] = np.zeros_like(m.params[name])
                param_layouts[layout] += 1
        layout = LAYOUTS[int(r.integers(0, 4))]
        state = [p.data for p in layer.parameters()] + [
            b for b in layer.buffers() if b.dtype.kind == "f"]
        # the input takes the layer's dtype; a layer without state takes either
        dtype = state[0].dtype if state else (np.float32 if r.random() < 0.3 else np.float64)
        x = laid_out(draw(shape, dtype), layout)
        kept = x.copy()
        try:
            report = assert_layer_correct(layer, x, rng=r)
        except AssertionError as e:
            params = [(n, p.data.shape, p.data.strides) for n, p in layer.named_parameters()]
            raise AssertionError(f"case {case}: a right {kind} failed, parameters (name, "
                                 f"shape, strides) {params}, input {shape} laid out "
                                 f"{layout}:\n{e}") from None
        np.testing.assert_array_equal(x, kept)
        # distinct values away from 0: no ReLU kink and no max-pool tie within the step, so
        # a kink found here would be a false one (an element silently not compared)
        assert all(t.n_kinks == 0 for t in report), f"case {case}, {kind}:\n{report}"
        assert all(t.mode == "full" and t.compared == int(np.prod(t.shape))
                   for t in report), str(report)             # small: every element compared
        kinds[kind] += 1
        input_layouts[layout] += 1
        dtypes[np.dtype(dtype).name] += 1
    assert sum(kinds.values()) == CASES
    # every kind of layer, every layout and both dtypes were drawn, enough times each
    assert len(kinds) == 15 and min(kinds.values()) >= 5, kinds
    assert set(param_layouts) == set(LAYOUTS) and min(param_layouts.values()) >= 40, \
        param_layouts
    assert set(input_layouts) == set(LAYOUTS) and min(input_layouts.values()) >= 40, \
        input_layouts
    assert min(dtypes.values()) >= 60, dtypes
