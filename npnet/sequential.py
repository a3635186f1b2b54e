"""Sequential: layers run in order forward, and in reverse order backward.

Backprop through a chain is the chain rule applied layer by layer::

    x -> f1 -> f2 -> ... -> fL -> y          forward
    dL/dx <- f1' <- f2' <- ... <- fL' <- dL/dy   backward: each layer turns the gradient of
                                                  its output into that of its input
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from . import fused as _fused
from .layers.base import Layer, Parameter


class Sequential(Layer):
    """A chain of layers, as torch.nn.Sequential.

    ``Sequential(l1, l2, ...)`` names the layers '0', '1', ...;
    ``Sequential(OrderedDict(conv1=..., relu1=...))`` uses the given names, which prefix
    the keys of ``state_dict()`` ('conv1.weight').  A Sequential may hold Sequentials.

    ``fuse=True`` (default) lets it run Conv2d -> ReLU -> MaxPool2d(2) as one fast kernel
    when that computes the same thing (float32, no hooks): see npnet/fused.py.
    """

    def __init__(self, *layers, fuse=True):
        super().__init__()
        self.fuse = bool(fuse)
        self._plan = None           # the fused schedule (npnet/fused.py), built lazily
        self._fused_pass = False    # did the last forward run through it?
        if len(layers) == 1 and isinstance(layers[0], (OrderedDict, dict)):
            items = list(layers[0].items())
        else:
            items = [(str(i), layer) for i, layer in enumerate(layers)]
        self.layers: OrderedDict[str, Layer] = OrderedDict()
        for name, layer in items:
            if not isinstance(layer, Layer):
                raise ValueError(f"Sequential: '{name}' is a {type(layer).__name__}, "
                                 "not an npnet Layer")
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"Sequential: layer names must be non-empty strings without "
                                 f"'.', got {name!r}")
            self.layers[name] = layer

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.layers[key]
        return list(self.layers.values())[key]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers.values())

    # -- forward and backward --------------------------------------------------------------
    def forward(self, x):
        self._fused_pass = False
        if self.fuse and _fused.enabled:                 # the fast path, npnet/fused.py
            layers = list(self.layers.values())
            if not _fused.has_hooks(layers):
                if self._plan is None or self._plan.key != tuple(map(id, layers)):
                    self._plan = _fused.Plan(layers)
                if self._plan.steps is not None:
                    y = self._plan.forward(x)
                    self._fused_pass = True
                    return y
        for layer in self.layers.values():
            y = layer.forward(x)
            for hook in layer._forward_hooks:
                hook(layer, x, y)
            x = y
        return x

    def backward(self, grad_out, need_grad_in=True):
        """Run every layer's backward in reverse order; returns dL/d(input).

        ``need_grad_in=False`` lets the first layer skip the gradient of the network's
        input (returns None): training never uses the gradient of the images.
        """
        if self._fused_pass:                             # forward ran the fast path
            if _fused.has_hooks(list(self.layers.values())):
                raise RuntimeError(
                    "Sequential.backward: a hook was registered after the forward pass, "
                    "which ran on the fused path without hooks; run forward again so the "
                    "hooks see every layer")
            grad_in = self._plan.backward(grad_out, need_grad_in)
            self._fused_pass = False
            return grad_in
        layers = list(self.layers.values())
        for i in range(len(layers) - 1, -1, -1):
            layer = layers[i]
            if i == 0 and not need_grad_in and layer.can_skip_grad_in:
                grad_in = layer.backward(grad_out, need_grad_in=False)
            else:
                grad_in = layer.backward(grad_out)
            for hook in layer._backward_hooks:
                hook(layer, grad_in, grad_out)
            grad_out = grad_in
        return grad_out

    @property
    def can_skip_grad_in(self):
        return bool(self.layers) and next(iter(self.layers.values())).can_skip_grad_in

    # -- parameters and state --------------------------------------------------------------
    def named_parameters(self) -> list[tuple[str, Parameter]]:
        out = []
        for name, layer in self.layers.items():
            out += [(f"{name}.{k}", p) for k, p in layer.named_parameters()]
        return out

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def zero_grad(self):
        for layer in self.layers.values():
            layer.zero_grad()

    def train(self, mode=True):
        self.training = mode
        for layer in self.layers.values():
            layer.train(mode)
        return self

    def num_parameters(self) -> int:
        return sum(p.data.size for p in self.parameters())

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter, keyed 'layer.param' in forward order (as torch)."""
        return OrderedDict((k, p.data.copy()) for k, p in self.named_parameters())

    def load_state_dict(self, state, strict=True):
        """Copy ``state`` into the live parameters, in place.

        Refuses, with a ValueError and before changing anything, a key that is missing or
        unexpected (unless ``strict=False``) and any array of the wrong shape.
        """
        own = OrderedDict(self.named_parameters())
        if not hasattr(state, "keys"):
            raise ValueError(f"load_state_dict: expected a dict of arrays, got "
                             f"{type(state).__name__}")
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        problems = []
        if strict and missing:
            problems.append(f"missing keys {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys {unexpected}")
        for k in own:
            if k in state:
                v = state[k]
                shape = np.shape(v)
                if shape != own[k].data.shape:
                    problems.append(f"'{k}' has shape {shape}, the model expects "
                                    f"{own[k].data.shape}")
                elif not np.issubdtype(np.asarray(v).dtype, np.number):
                    problems.append(f"'{k}' is not numeric ({np.asarray(v).dtype})")
                elif np.iscomplexobj(v):
                    problems.append(f"'{k}' is complex ({np.asarray(v).dtype}); parameters "
                                    "are real")
        if problems:
            raise ValueError("load_state_dict refused, the model is unchanged: "
                             + "; ".join(problems))
        for k, p in own.items():
            if k in state:
                np.copyto(p.data, np.asarray(state[k]), casting="unsafe")

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"  ({name}): {layer!r}".replace("\n", "\n  ")
                 for name, layer in self.layers.items()]
        return "Sequential(\n" + "\n".join(lines) + "\n)"
