"""Watching a network work: record every layer's activations and gradients, no edits needed.

Every layer accepts two kinds of hook (``npnet/layers/base.py``)::

    handle = layer.register_forward_hook(fn)    # fn(layer, x, y) after each forward
    handle = layer.register_backward_hook(fn)   # fn(layer, grad_in, grad_out) after each
                                                #   backward run by a Sequential
    handle.remove()                             # and it is gone

``trace`` puts both hooks on every layer of a model, records what they see, and takes
them off again when the ``with`` block ends::

    with npnet.hooks.trace(model) as tape:
        loss = crit(model(x), y)
        model.backward(crit.backward())
    tape["conv1"].output          # what conv1 produced          (N, 6, 28, 28)
    tape["conv1"].grad_out        # dL/d(output), arriving from above, same shape
    tape["conv1"].grad_in         # dL/d(input), leaving towards the image (N, 1, 28, 28)

Names are the Sequential's own ('conv1', 'act1', ...); a layer inside a nested Sequential
is named by its path ('features.conv1').  The arrays are copies, taken when the hook
fires, so a layer that later reuses a buffer cannot change what was recorded.

A Sequential with a hook on any of its layers runs them one by one, never through the
fused conv -> ReLU -> pool kernel (npnet/fused.py), so a trace sees every layer.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .layers.base import Layer
from .sequential import Sequential

__all__ = ["Record", "Tape", "trace", "named_layers"]


@dataclass
class Record:
    """What one layer saw during the last forward and backward pass of a trace.

    ``input`` -> layer -> ``output`` on the way forward; ``grad_out`` (dL/d output, the
    gradient arriving) -> layer.backward -> ``grad_in`` (dL/d input, the gradient leaving)
    on the way back.  ``grad_in`` is None when the layer was told to skip it (the first
    layer, in ``model.backward(g, need_grad_in=False)``).  Fields stay None until the
    matching hook has fired; ``forward_calls`` and ``backward_calls`` count the firings.
    """
    name: str
    layer: Layer
    input: np.ndarray | None = None
    output: np.ndarray | None = None
    grad_out: np.ndarray | None = None
    grad_in: np.ndarray | None = None
    forward_calls: int = 0
    backward_calls: int = 0


@dataclass
class Tape(Mapping):
    """The records of a trace, by layer name in forward order; also a log of hook firings.

    ``tape["conv1"]`` is a :class:`Record`; ``list(tape)`` the names in forward order;
    ``tape.events`` every firing in time order, as ``("forward" | "backward", name)``.
    """
    records: "OrderedDict[str, Record]" = field(default_factory=OrderedDict)
    events: list = field(default_factory=list)

    def __getitem__(self, name: str) -> Record:
        return self.records[name]

    def __iter__(self):
        return iter(self.records)

    def __len__(self):
        return len(self.records)

    def table(self, print_fn=print) -> None:
        """One line per layer: the shapes in and out, and the size of each gradient."""
        print_fn(f"{'layer':<12}{'input':>18}{'output':>18}{'|grad_out|':>12}{'|grad_in|':>12}")
        for name, r in self.records.items():
            print_fn(f"{name:<12}{_shape(r.input):>18}{_shape(r.output):>18}"
                     f"{_norm(r.grad_out):>12}{_norm(r.grad_in):>12}")


def named_layers(model: Layer, prefix: str = ""):
    """(name, layer) for every layer that computes (not the Sequentials), in forward order.

    A lone layer (not a Sequential) is named after its class, e.g. 'Conv2d'.
    """
    if not isinstance(model, Sequential):
        yield (prefix.rstrip(".") or type(model).__name__), model
        return
    for name, layer in model.layers.items():
        yield from named_layers(layer, f"{prefix}{name}.")


@contextmanager
def trace(model: Layer, copy: bool = True):
    """Record the input, output, grad_out and grad_in of every layer of ``model``.

    Args:
        model: a Sequential (nested ones too) or a single layer.
        copy: keep copies of the arrays (default).  ``copy=False`` keeps the arrays
            themselves: cheaper, but a layer that reuses a buffer would change them.

    Yields:
        a :class:`Tape`, filled while the block runs.  The hooks are removed when the block
        ends, even by an exception; the tape stays readable afterwards.

    The forward hooks fire for ``model(x)`` and ``model.forward(x)``; the backward hooks
    fire inside ``Sequential.backward``.  A single layer outside any Sequential records its
    forward when called as ``layer(x)`` but never its backward (no Sequential runs it).
    """
    tape = Tape()
    handles = []
    try:
        for name, layer in named_layers(model):
            if name in tape.records:
                raise ValueError(f"trace: two layers are named {name!r}")
            record = tape.records[name] = Record(name, layer)
            handles.append(layer.register_forward_hook(_on_forward(tape, record, copy)))
            handles.append(layer.register_backward_hook(_on_backward(tape, record, copy)))
        yield tape
    finally:
        for handle in handles:
            handle.remove()


# -- the hooks themselves ------------------------------------------------------------------
def _on_forward(tape: Tape, record: Record, copy: bool):
    def hook(layer, x, y):
        record.input, record.output = _keep(x, copy), _keep(y, copy)
        record.forward_calls += 1
        tape.events.append(("forward", record.name))
    return hook


def _on_backward(tape: Tape, record: Record, copy: bool):
    def hook(layer, grad_in, grad_out):
        record.grad_in, record.grad_out = _keep(grad_in, copy), _keep(grad_out, copy)
        record.backward_calls += 1
        tape.events.append(("backward", record.name))
    return hook


def _keep(a, copy: bool):
    if a is None or not copy:
        return a
    return np.array(a, copy=True)


def _shape(a) -> str:
    return "-" if a is None else str(tuple(np.shape(a)))


def _norm(a) -> str:
    return "-" if a is None else f"{float(np.linalg.norm(a)):.3e}"
