"""Watching a network work: record every layer call's activations and gradients.

Every module accepts hooks, as torch's do (``npnet/module.py``)::

    handle = layer.register_forward_hook(fn)         # fn(layer, args, output) after
                                                     #   each forward
    handle = layer.register_full_backward_hook(fn)   # fn(layer, grad_input, grad_output)
                                                     #   after each backward (tuples)
    handle.remove()                                  # and it is gone

They fire wherever the layer runs: on its own, in a Sequential, inside a model of yours.
``trace`` puts both on every layer of a model, records what they see, and takes them off
again when the ``with`` block ends::

    with npnet.hooks.trace(model) as tape:
        loss = crit(model(x), y)
        model.backward(crit.backward())
    tape["conv1"].output          # what conv1 produced          (N, 6, 28, 28)
    tape["conv1"].grad_out        # dL/d(output), arriving from above, same shape
    tape["conv1"].grad_in         # dL/d(input), leaving towards the image (N, 1, 28, 28)

Records are per *call*, named by the layer's path in the model ('conv1',
'features.conv1'); a layer called again in the same forward gets 'relu#2', 'relu#3' (the
seed's LeNet5 calls one ReLU four times).  The arrays are copies, taken when the hook fires,
so a later change to the arrays cannot change what was recorded.

A layer with a hook is never fused (npnet/fusion.py), so a trace sees every layer.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from . import autograd
from .autograd import call_name
from .module import Module
from .summary import layers_of

__all__ = ["Record", "Tape", "trace", "named_layers"]


@dataclass
class Record:
    """What one layer call saw during the last forward and backward pass of a trace.

    ``input`` -> layer -> ``output`` on the way forward; ``grad_out`` (dL/d output, the
    gradient arriving) -> layer.backward -> ``grad_in`` (dL/d input, the gradient leaving)
    on the way back.  ``grad_in`` is None when the layer was told to skip it (the first
    layer, in ``model.backward(g, need_grad_in=False)``).  Fields stay None until the
    matching hook has fired; ``forward_calls`` and ``backward_calls`` count the firings.
    """
    name: str
    layer: Module
    input: np.ndarray | None = None
    output: np.ndarray | None = None
    grad_out: np.ndarray | None = None
    grad_in: np.ndarray | None = None
    forward_calls: int = 0
    backward_calls: int = 0


@dataclass
class Tape(Mapping):
    """The records of a trace, by call name in forward order; also a log of hook firings.

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
        """One line per call: the shapes in and out, and the size of each gradient."""
        print_fn(f"{'layer':<12}{'input':>18}{'output':>18}{'|grad_out|':>12}{'|grad_in|':>12}")
        for name, r in self.records.items():
            print_fn(f"{name:<12}{_shape(r.input):>18}{_shape(r.output):>18}"
                     f"{_norm(r.grad_out):>12}{_norm(r.grad_in):>12}")


def named_layers(model: Module):
    """(name, layer) for every layer (a module with its own backward) of ``model``, in
    registration order; a lone layer is named after its class, e.g. 'Conv2d'."""
    return layers_of(model)


@contextmanager
def trace(model: Module, copy: bool = True):
    """Record the input, output, grad_out and grad_in of every layer call of ``model``.

    Args:
        model: any model (a Sequential, a class of your own) or a single layer.
        copy: keep copies of the arrays (default).  ``copy=False`` keeps the arrays the
            hooks see: cheaper, but a later change to them would show in the records.

    Yields:
        a :class:`Tape`, filled while the block runs.  The hooks are removed when the block
        ends, even by an exception; the tape stays readable afterwards.  Each forward of
        the model starts the call count again, so records hold the last pass.
    """
    tape = Tape()
    calls = {}                       # id(layer) -> calls in the current forward
    by_call = {}                     # the recorded Call (or the layer) -> Record
    handles = []

    def new_forward(module, args):
        calls.clear()
        by_call.clear()

    def on_forward(name):
        def hook(layer, args, out):
            k = calls[id(layer)] = calls.get(id(layer), 0) + 1
            key = call_name(name, k)
            record = tape.records.get(key)
            if record is None:
                record = tape.records[key] = Record(key, layer)
            record.input = _keep(args[0] if len(args) == 1 else args, copy)
            record.output = _keep(out, copy)
            record.forward_calls += 1
            src = getattr(out, "_src", None)
            by_call[id(src) if isinstance(src, autograd.Call) else id(layer)] = record
            tape.events.append(("forward", key))
        return hook

    def on_backward(layer, grad_in, grad_out):
        c = autograd.current_call()
        record = by_call.get(id(c) if c is not None else id(layer)) or by_call.get(id(layer))
        if record is None:
            return
        record.grad_in = _keep(grad_in[0] if len(grad_in) == 1 else grad_in, copy)
        record.grad_out = _keep(grad_out[0] if len(grad_out) == 1 else grad_out, copy)
        record.backward_calls += 1
        tape.events.append(("backward", record.name))

    try:
        handles.append(model.register_forward_pre_hook(new_forward))
        for name, layer in layers_of(model):
            handles.append(layer.register_forward_hook(on_forward(name)))
            handles.append(layer.register_full_backward_hook(on_backward))
        yield tape
    finally:
        for handle in handles:
            handle.remove()


def _keep(a, copy: bool):
    if a is None:
        return None
    if isinstance(a, tuple):
        return tuple(_keep(x, copy) for x in a)
    a = autograd.realize(a)
    if not isinstance(a, np.ndarray):
        return a
    return np.array(a, copy=True) if copy else a


def _shape(a) -> str:
    return "-" if a is None else str(tuple(np.shape(a)))


def _norm(a) -> str:
    return "-" if a is None else f"{float(np.linalg.norm(a)):.3e}"
