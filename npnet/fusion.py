"""Where npnet fuses: a Conv2d whose output goes through a ReLU into a 2x2 max-pool.

Inside a model's forward (any model: a Sequential, the seed's class, your own), npnet
waits one step before computing a Conv2d's output.  The call returns at once a
:class:`~npnet.tensor.Deferred`: its shape is known (so a bad input fails at the call),
its values are computed when something reads them.  The next call decides:

* a ReLU given it defers too;
* a MaxPool2d given that runs the three as one :class:`~npnet.ConvReLUMaxPool2d` call
  (one kernel, docs/layers/fused.md), when the conv's stride is 1 and the pool is 2x2 of
  stride 2 without padding;
* anything else (another layer, NumPy, print, the end of the forward) computes the value
  with the layers' own forward, each a recorded call as usual.

Both paths compute the same function (up to float rounding: the same sums, in another
order) and are recorded the same way, so backward is the same replay.  What ran fused is in
the model's tape: ``print(npnet.autograd.tape_of(model))`` after a training forward.  A
layer with a hook, or with its forward or backward replaced on the instance, runs as
written and is never fused (a hook must see that layer's own input and output).  Switch
fusion off for a model with ``npnet.fusion.set_fusion(model, False)`` (it sets
``conv.fuse`` on every Conv2d; ``print(model)`` then shows ``fuse=False``).

The rules are read at every call, from the layers' attributes as they are then: there is
no plan to go stale.  A value computed later than its call is computed from the layer's
weights as they are when it is read; a conv whose stride, padding or weight shape changed
in between is refused with a ValueError.
"""
from __future__ import annotations

import numpy as np

from .layers import Conv2d, ConvReLUMaxPool2d, MaxPool2d, ReLU
from .tensor import Deferred, realize

__all__ = ["set_fusion", "RULES"]


def set_fusion(model, enabled: bool = True):
    """Let every Conv2d of ``model`` run fused (True, the default) or never (False)."""
    if not isinstance(enabled, bool):
        raise ValueError(f"set_fusion: enabled must be True or False, got {enabled!r}")
    for m in model.modules():
        if isinstance(m, Conv2d):
            m.fuse = enabled
    return model


def _as_written(m) -> bool:
    """No hook, and neither forward nor backward replaced on the instance."""
    d = m.__dict__
    return not (d["_forward_pre_hooks"] or d["_forward_hooks"] or d["_backward_hooks"]
                or "forward" in d or "backward" in d)


def _geometry(conv):
    return conv.params["weight"].shape, conv._stride, conv._padding


def _conv(fwd, conv, args):
    """A Conv2d call: defer the output until the next call says what follows."""
    if len(args) != 1 or not conv.fuse or not _as_written(conv):
        return NotImplemented
    x = realize(args[0])
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.dtype != conv.params["weight"].dtype:
        return NotImplemented              # the layer's own forward says what is wrong
    shape = conv.output_shape(x.shape)     # a bad input fails here, at the call
    if shape[2] < 2 or shape[3] < 2:
        return NotImplemented              # no 2x2 window fits: nothing to wait for
    geometry = _geometry(conv)

    def compute():
        if _geometry(conv) != geometry:
            raise ValueError(f"{conv!r} changed (weight shape, stride or padding) between "
                             "its call and the first use of its output")
        return fwd.run(conv, (x,))
    return fwd.defer(Deferred(shape, x.dtype, compute, pending=("conv", conv, x, geometry),
                              about=lambda: f"the output of {conv!r}, computed when next used"))


def _waiting(args, kind) -> bool:
    """Is the call's one input a value still deferred by the rule for ``kind``?"""
    if len(args) != 1:
        return False
    d = args[0]
    return (type(d) is Deferred and not d.computed and d.pending is not None
            and d.pending[0] == kind)


def _relu(fwd, relu, args):
    """A ReLU of a deferred conv output: defer too, a 2x2 max-pool may follow."""
    if not (_waiting(args, "conv") and _as_written(relu)):
        return NotImplemented
    d = args[0]
    return fwd.defer(Deferred(d.shape, d.dtype, lambda: fwd.run(relu, (d.value(),)),
                              pending=("relu", d, relu),
                              about=lambda: f"ReLU of {d.about}"))


def _pool(fwd, pool, args):
    """A MaxPool2d of a deferred ReLU of a deferred conv: one fused call, if it fits."""
    if not (_waiting(args, "relu") and _as_written(pool)):
        return NotImplemented
    d, relu = args[0].pending[1], args[0].pending[2]
    if d.computed:
        return NotImplemented
    conv, x, geometry = d.pending[1], d.pending[2], d.pending[3]
    if _geometry(conv) != geometry or not ConvReLUMaxPool2d.fits(conv, relu, pool):
        return NotImplemented
    out = fwd.run(_fused(conv, relu, pool), (x,))
    if fwd.tape is not None:
        fwd.tape.fused.append(out._src)
    return out


def _fused(conv, relu, pool) -> ConvReLUMaxPool2d:
    """The fused layer for these three (one per triple, kept on the conv: it holds no
    state but the three layers, which it reads at every call)."""
    kept = conv.__dict__.get("_fused_with")
    if kept is not None:
        m = kept._modules                  # not kept.relu: Module.__getattr__, ~1.5 us
        if m["relu"] is relu and m["pool"] is pool:
            return kept
    layer = ConvReLUMaxPool2d(conv, relu, pool)
    conv.__dict__["_fused_with"] = layer
    return layer


#: The layer types whose calls npnet may defer or fuse, and the rule for each.
RULES = {Conv2d: _conv, ReLU: _relu, MaxPool2d: _pool}
