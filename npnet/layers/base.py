"""The layer contract every npnet layer follows, and the helpers the layers share.

A layer is a Module (``npnet/module.py``) with a hand-written forward and backward::

    y = layer(x)                    # calls layer.forward(x), which keeps in self._cache
                                    # what backward needs (training mode only)
    grad_in = layer.backward(grad_out)   # d loss / d x, and ADDS d loss / d param
                                         # into layer.grads[name]

``layer.params`` maps a name ('weight', 'bias') to the live parameter array (also
``layer.weight``); ``layer.grads`` has the same keys and shapes.  Gradients accumulate
(``+=``), as in micrograd and torch, so call ``zero_grad()`` between steps.  In eval mode
a layer keeps no cache.

Called on its own, a layer keeps its cache on itself, for ``layer.backward``.  Called
inside a model's forward, the cache is moved into that call's record (``npnet/autograd.py``)
after each forward and handed back for the backward: so a layer used twice has two, and
what a backward reads is what its own forward kept.  A backward must therefore read the
cache, not the layer's live attributes: the weights, stride or padding may have changed
since.

``npnet.testing.assert_layer_correct(layer, x)`` checks a layer against this contract
(docs/testing_your_layer.md); a layer whose training output for one sample depends on the
others, as batch norm's does, declares ``mixes_samples = True``.
"""
from __future__ import annotations

import contextlib

import numpy as np

from ..kernels.geometry import out_size
from ..module import Module, Parameter

#: The base class of a layer of your own (the same class as npnet.nn.Module).
Layer = Module

__all__ = ["Layer", "Parameter", "pair", "check_array", "check_float_array", "check_grad",
           "add_grad",
           "no_cache_error", "uniform_init", "out_size", "init_generator"]


def pair(v, name: str) -> tuple[int, int]:
    """An int or a pair of ints -> (a, b); anything else is a ValueError naming ``name``."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v), int(v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(
            isinstance(e, (int, np.integer)) and not isinstance(e, bool) for e in v):
        return int(v[0]), int(v[1])
    raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")


def window_arg(layer: str, what: str, v, minimum: int) -> tuple[int, int]:
    """A kernel_size, stride (>= 1) or padding (>= 0) as a pair, or a ValueError."""
    p = pair(v, f"{layer} {what}")
    if min(p) < minimum:
        raise ValueError(f"{layer}: kernel_size and stride must be >= 1 and padding >= 0, "
                         f"got {what} {p}")
    return p


def from_weight(attr: str, index):
    """A layer attribute read from its weight's shape (one source of truth): reading it
    gives the shape's entry; assigning it is refused, naming what to do instead."""
    def get(self):
        shape = self.params["weight"].shape
        return tuple(shape[index]) if isinstance(index, slice) else shape[index]

    def refuse(self, value):
        raise ValueError(f"{type(self).__name__}.{attr} is read from the weight's shape "
                         f"{self.params['weight'].shape}; to change it, assign a new weight "
                         f"(layer.weight = array) or build a new layer")
    return property(get, refuse, doc=f"{attr}, read from the weight's shape")


def positive_int(layer: str, name: str, v) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{layer}: {name} must be a positive int, got {v!r}")
    return int(v)


def float_dtype(layer: str, dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.float32, np.float64):
        raise ValueError(f"{layer}: dtype must be float32 or float64, got {dtype!r}")
    return dt


def check_array(layer: Module, x, ndim: int, what: str = "input") -> np.ndarray:
    """Refuse anything but a floating ndarray of ``ndim`` dimensions, naming the layer."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{layer!r}: {what} must be a numpy array, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{layer!r}: expected a {ndim}-D {what}, got shape {x.shape} "
                         f"({x.ndim}-D)")
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"{layer!r}: {what} must be float32 or float64, got {x.dtype}")
    return x


def check_float_array(layer: Module, x) -> np.ndarray:
    """Refuse anything but a float32 or float64 ndarray (of any shape), naming the layer."""
    if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64):
        what = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{layer!r}: input must be a float32 or float64 array, got {what}")
    return x


def check_dtype(layer: Module, x: np.ndarray, weight: np.ndarray) -> None:
    if x.dtype != weight.dtype:
        raise ValueError(f"{layer!r}: input is {x.dtype} but the layer is {weight.dtype}; "
                         f"cast the input or convert the layer with .to(np.{x.dtype})")


def check_grad(layer: Module, grad_out, expected_shape: tuple, dtype) -> np.ndarray:
    """grad_out must match the forward output's shape and dtype."""
    if not isinstance(grad_out, np.ndarray):
        raise ValueError(f"{layer!r}: grad_out must be a numpy array, "
                         f"got {type(grad_out).__name__}")
    if grad_out.shape != tuple(expected_shape):
        raise ValueError(f"{layer!r}: grad_out has shape {grad_out.shape}, expected "
                         f"{tuple(expected_shape)} (the shape of the forward output)")
    if grad_out.dtype != dtype:
        raise ValueError(f"{layer!r}: grad_out is {grad_out.dtype}, expected {dtype}")
    return grad_out


def add_grad(layer: Module, name: str, value: np.ndarray) -> None:
    """``layer.grads[name] += value``, refusing a parameter replaced since the forward."""
    g = layer.grads.get(name)
    if g is None or g.shape != value.shape:
        now = None if g is None else g.shape
        raise ValueError(f"{layer!r}: parameter '{name}' was replaced between forward and "
                         f"backward (it had shape {value.shape}, now {now}): run forward again")
    g += value


def no_cache_error(layer: Module) -> RuntimeError:
    return RuntimeError(f"{layer!r}: backward() needs a forward() in training mode first "
                        "(each forward allows one backward)")


_init_rng = []          # the generators of the enclosing init_generator blocks


@contextlib.contextmanager
def init_generator(rng: np.random.Generator):
    """Layers built in this block without ``rng=`` draw their initial weights from ``rng``:
    a class written like torch's (no rng argument) is then reproducible::

        with npnet.nn.init_generator(np.random.default_rng(0)):
            model = LeNet5()
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"init_generator: rng must be a np.random.Generator "
                         f"(np.random.default_rng(seed)), got {type(rng).__name__}")
    _init_rng.append(rng)
    try:
        yield rng
    finally:
        _init_rng.pop()


def resolve_rng(rng):
    """``rng`` itself, else the enclosing init_generator's, else a fresh unseeded one."""
    if rng is None:
        return _init_rng[-1] if _init_rng else np.random.default_rng()
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a np.random.Generator (np.random.default_rng(seed)), "
                         f"got {type(rng).__name__}")
    return rng


def uniform_init(rng, shape, fan_in: int, dtype) -> np.ndarray:
    """torch's default for conv and linear layers: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / np.sqrt(fan_in)
    return resolve_rng(rng).uniform(-bound, bound, size=shape).astype(dtype)
