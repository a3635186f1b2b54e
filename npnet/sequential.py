"""Sequential: modules called in order; backward is the model's replay, in reverse order.

Backprop through a chain is the chain rule applied layer by layer::

    x -> f1 -> f2 -> ... -> fL -> y          forward
    dL/dx <- f1' <- f2' <- ... <- fL' <- dL/dy   backward: each layer turns the gradient of
                                                  its output into that of its input

A Sequential is a model like any other (npnet/module.py): its forward calls its children
in turn, and ``backward`` replays the calls that forward recorded (npnet/autograd.py).
"""
from __future__ import annotations

from collections import OrderedDict

from .module import Module


class Sequential(Module):
    """A chain of modules, as torch.nn.Sequential.

    ``Sequential(m1, m2, ...)`` names the modules '0', '1', ...;
    ``Sequential(OrderedDict(conv1=..., relu1=...))`` uses the given names, which prefix
    the keys of ``state_dict()`` ('conv1.weight').  A Sequential may hold Sequentials.
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (OrderedDict, dict)):
            items = list(modules[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(modules)]
        for name, m in items:
            if not isinstance(m, Module):
                raise ValueError(f"Sequential: '{name}' is a {type(m).__name__}, "
                                 "not an npnet Module")
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"Sequential: layer names must be non-empty strings without "
                                 f"'.', got {name!r}")
            self.add_module(name, m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    @property
    def layers(self) -> "OrderedDict[str, Module]":
        """The children by name, in order (npnet's name for torch's ``_modules``)."""
        return self._modules

    def __getitem__(self, key):
        if isinstance(key, str):
            return self._modules[key]
        items = list(self._modules.items())
        if isinstance(key, slice):
            return Sequential(OrderedDict(items[key]))
        return items[key][1]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module: Module) -> "Sequential":
        self.add_module(str(len(self._modules)), module)
        return self
