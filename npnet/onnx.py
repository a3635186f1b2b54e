"""Export a model to ONNX, traced through its forward's record of calls.

    npnet.onnx.export(model, "model.onnx", input_shape=(1, 1, 28, 28))

The graph is the model's tape (npnet/autograd.py): one training forward on zeros records
every layer call and where each input came from, so a layer called twice is two nodes,
and a residual ``functional.add`` is an Add whose inputs are the two calls that made them.
Each call becomes the ONNX operator(s) that compute it in eval mode:

    Conv2d -> Conv        Linear -> Gemm (transB)      BatchNorm1d/2d -> BatchNormalization
    ReLU, LeakyReLU, Tanh, Sigmoid -> Relu, LeakyRelu, Tanh, Sigmoid
    MaxPool2d -> MaxPool  AvgPool2d -> AveragePool (count_include_pad)
    AdaptiveAvgPool2d -> GlobalAveragePool (output 1), AveragePool (sizes that divide)
    ConvReLUMaxPool2d (a fused call) -> Conv, Relu, MaxPool
    Flatten, reshape, view -> Reshape (the batch dimension kept: 0)
    add -> Add, cat -> Concat, Identity and Dropout -> Identity

Weights are initializers named by their state_dict keys ('conv1.weight'), so a viewer
(Netron) shows npnet's names; batch norm exports its eval form (running statistics).  The
batch axis is dynamic ('N').  The trace leaves the model as it was: its mode, buffers
(the running statistics the training forward moved) and the state of any Dropout's
generator are put back, and the record is dropped.  A layer with no ONNX form is a
ValueError naming it.  The protobuf is built and checked by the ``onnx`` package: nothing
of the format is written by hand.
"""
from __future__ import annotations

import os

import numpy as np

from . import autograd
from .layers import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d,
                     ConvReLUMaxPool2d, Dropout, Flatten, Identity, LeakyReLU, Linear,
                     MaxPool2d, ReLU, Sigmoid, Tanh)
from .module import HookEdge, Module
from .nn.functional import Add, Cat, Reshape

__all__ = ["export", "OPSET"]

#: The ONNX operator set the graphs use (onnxruntime 1.18 and later run it).
OPSET = 21


def export(model: Module, path, input_shape=(1, 1, 28, 28), input_name="input",
           output_name="logits"):
    """Write ``model`` as an ONNX file at ``path`` and return the checked ModelProto.

    Args:
        model: an npnet model (a Sequential, a class of your own) or a single layer, with
            float32 parameters.
        path: the .onnx file to write (written atomically: complete or absent).
        input_shape: the input's shape; its first entry, the batch, becomes the dynamic
            axis 'N' (any batch size runs).
        input_name, output_name: the graph's input and output names.

    Raises:
        ValueError: a layer or an operation with no ONNX form (named), a float64 model, a
            reshape that merges the batch dimension, a forward that returns no array.
    """
    import onnx
    from onnx import TensorProto, helper

    from .io import atomic_write

    shape = _check_shape(input_shape)
    if not isinstance(model, Module):
        raise ValueError(f"npnet.onnx.export: expected an npnet Module, got "
                         f"{type(model).__name__}")
    dtypes = {p.data.dtype for p in model.parameters()}
    if dtypes - {np.dtype(np.float32)}:
        raise ValueError(f"npnet.onnx.export: the model's parameters are "
                         f"{sorted(map(str, dtypes))}; export a float32 model "
                         "(model.to(np.float32))")
    tape, traced_n = _trace(model, shape)
    graph = _Graph(tape.model, traced_n, input_name)
    for call, what in zip(tape.calls, tape.call_names()):
        graph.emit(call, what)
    outs = tape.out_sources
    if not outs or any(o is None for o in outs):
        raise ValueError("npnet.onnx.export: the model's forward returned no array computed "
                         "from its input")
    out_names = [output_name] if len(outs) == 1 else [f"{output_name}_{i}"
                                                      for i in range(len(outs))]
    for src, name in zip(outs, out_names):
        graph.nodes.append(helper.make_node("Identity", [graph.value(src)], [name],
                                            name=f"{name}_out"))
    dyn = ["N"] + list(shape[1:])
    proto = helper.make_model(
        helper.make_graph(
            graph.nodes, type(model).__name__,
            [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, dyn)],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N"] + list(s.shape[1:]))
             for n, s in zip(out_names, outs)],
            initializer=graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="npnet")
    proto.ir_version = helper.find_min_ir_version_for(proto.opset_import)
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()
    atomic_write(os.fspath(path), lambda f: f.write(data))
    return proto


def _check_shape(input_shape) -> tuple:
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) < 1 or any(
            not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 1
            for d in input_shape):
        raise ValueError(f"npnet.onnx.export: input_shape must be a tuple of positive ints "
                         f"such as (1, 1, 28, 28), got {input_shape!r}")
    return tuple(int(d) for d in input_shape)


def _trace(model, shape):
    """One training forward on zeros (batch of at least 2, so that batch norm has
    statistics to compute), its tape, and the batch size used.  Everything the forward
    changes is put back."""
    if model._is_layer:                   # a lone layer: trace a model of that one call
        return _trace(_Wrap(model), shape)
    n = max(2, shape[0])
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.copy()) for _, b in model.named_buffers()]
    generators = [(m.rng, m.rng.bit_generator.state) for m in model.modules()
                  if isinstance(getattr(m, "rng", None), np.random.Generator)]
    dtype = next((p.data.dtype for p in model.parameters()), np.dtype(np.float32))
    try:
        model.train()
        model(np.zeros((n, *shape[1:]), dtype))
        tape = autograd.tape_of(model)
    finally:
        for m, training in modes:
            m.training = training
        for live, kept in buffers:
            live[...] = kept
        for rng, state in generators:
            rng.bit_generator.state = state
        model.__dict__["_tape"] = None     # no backward may replay the trace
        for m in model.modules():
            m._cache = None
    return tape, n


class _Wrap(Module):
    """A model of one layer, so that a lone layer is traced like a model."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


class _Graph:
    """The nodes and initializers of the graph, built call by call."""

    def __init__(self, model, traced_n, input_name):
        self.names = {id(m): n for n, m in model.named_modules()}
        if isinstance(model, _Wrap):
            self.names = {id(model.layer): type(model.layer).__name__}
        self.traced_n, self.input_name = traced_n, input_name
        self.nodes, self.initializers, self._values, self._weights = [], [], {}, {}
        self._used = set()                     # value names taken: the graph is SSA

    # -- names --------------------------------------------------------------------------
    def value(self, src) -> str:
        """The graph value a call's output or the model's input is."""
        if isinstance(src, autograd.Input):
            return self.input_name
        return self._values[id(src)]

    def weight(self, module, key: str, array=None) -> str:
        """The initializer for ``module``'s parameter or buffer ``key`` (or for ``array``,
        a constant derived from it), named by its state_dict key; made once."""
        from onnx import numpy_helper
        prefix = self.names.get(id(module), "")
        name = f"{prefix}.{key}" if prefix else key
        if name not in self._weights:
            value = module.params.get(key) if array is None else array
            if value is None:
                value = module._buffers[key]
            self._weights[name] = True
            self.initializers.append(numpy_helper.from_array(
                np.ascontiguousarray(value, dtype=np.float32), name))
        return name

    def constant(self, name: str, array) -> str:
        from onnx import numpy_helper
        if name not in self._weights:
            self._weights[name] = True
            self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    # -- one call -----------------------------------------------------------------------
    def emit(self, call, what: str) -> None:
        from onnx import helper
        m = call.module
        ins = []
        for i, src in enumerate(call.sources):
            if src is None:
                raise ValueError(f"npnet.onnx.export: input {i} of {what} "
                                 f"({type(m).__name__}) is a constant or a detached array; "
                                 "only values computed from the model's input can be "
                                 "exported")
            ins.append(self.value(src))
        base = what.replace(" ", "")
        if base in self._used:                 # a functional call ('add') made again
            base = f"{base}@{call.index}"
        self._used.add(base)
        out = self._values[id(call)] = f"{base}:out"
        node = lambda op, i, o, **kw: self.nodes.append(  # noqa: E731
            helper.make_node(op, i, o, name=f"{base}/{op}", **kw))

        if isinstance(m, ConvReLUMaxPool2d):                # the fused call: its three
            conv, pool = m.conv, m.pool
            node("Conv", [ins[0], *self._conv_weights(conv)], [out + "/conv"],
                 **_conv_attrs(conv))
            node("Relu", [out + "/conv"], [out + "/relu"])
            node("MaxPool", [out + "/relu"], [out], **_pool_attrs(pool))
        elif isinstance(m, Conv2d):
            node("Conv", [ins[0], *self._conv_weights(m)], [out], **_conv_attrs(m))
        elif isinstance(m, Linear):
            args = [ins[0], self.weight(m, "weight")]
            if m.params.get("bias") is not None:
                args.append(self.weight(m, "bias"))
            node("Gemm", args, [out], transB=1)
        elif isinstance(m, (BatchNorm1d, BatchNorm2d)):
            if not m.track_running_stats:
                raise ValueError(f"npnet.onnx.export: {what} ({type(m).__name__}) has no "
                                 "running statistics (track_running_stats=False), so it "
                                 "normalises by each batch's own; ONNX's "
                                 "BatchNormalization needs fixed statistics")
            C = m.num_features
            scale = self.weight(m, "weight") if m.affine else \
                self.weight(m, "weight", np.ones(C, np.float32))
            shift = self.weight(m, "bias") if m.affine else \
                self.weight(m, "bias", np.zeros(C, np.float32))
            node("BatchNormalization", [ins[0], scale, shift,
                                        self.weight(m, "running_mean"),
                                        self.weight(m, "running_var")],
                 [out], epsilon=float(m.eps))
        elif isinstance(m, ReLU):
            node("Relu", ins, [out])
        elif isinstance(m, LeakyReLU):
            node("LeakyRelu", ins, [out], alpha=float(m.negative_slope))
        elif isinstance(m, Tanh):
            node("Tanh", ins, [out])
        elif isinstance(m, Sigmoid):
            node("Sigmoid", ins, [out])
        elif isinstance(m, MaxPool2d):
            node("MaxPool", ins, [out], **_pool_attrs(m))
        elif isinstance(m, AvgPool2d):
            node("AveragePool", ins, [out], count_include_pad=1, **_pool_attrs(m))
        elif isinstance(m, AdaptiveAvgPool2d):
            (H, W), (OH, OW) = call.sources[0].shape[2:], call.shape[2:]
            if (OH, OW) == (1, 1):
                node("GlobalAveragePool", ins, [out])
            elif H % OH == 0 and W % OW == 0:       # equal windows: a plain average pool
                k = [H // OH, W // OW]
                node("AveragePool", ins, [out], kernel_shape=k, strides=k)
            else:
                raise ValueError(f"npnet.onnx.export: {what} (AdaptiveAvgPool2d) pools "
                                 f"{H}x{W} to {OH}x{OW}, whose windows overlap; ONNX has "
                                 "no operator for that")
        elif isinstance(m, (Flatten, Reshape)):
            in_shape, out_shape = call.sources[0].shape, call.shape
            if not (len(in_shape) and len(out_shape) and in_shape[0] == self.traced_n
                    == out_shape[0]):
                raise ValueError(f"npnet.onnx.export: {what} reshapes {in_shape} to "
                                 f"{out_shape}, mixing the batch dimension with the others; "
                                 "only reshapes that keep it can have a dynamic batch")
            target = self.constant(f"{out}/shape", np.array([0, *out_shape[1:]], np.int64))
            node("Reshape", [ins[0], target], [out])
        elif isinstance(m, Add):
            node("Add", ins, [out])
        elif isinstance(m, Cat):
            node("Concat", ins, [out], axis=int(m.dim % len(call.shape)))
        elif isinstance(m, (Identity, Dropout, HookEdge)):   # Dropout in eval: the identity
            node("Identity", ins[:1], [out])
        else:
            raise ValueError(f"npnet.onnx.export: cannot export {what} "
                             f"({type(m).__name__}): npnet knows no ONNX form for it")

    def _conv_weights(self, conv) -> list:
        names = [self.weight(conv, "weight")]
        if conv.params.get("bias") is not None:
            names.append(self.weight(conv, "bias"))
        return names


def _conv_attrs(conv) -> dict:
    (ph, pw), (sh, sw) = conv.padding, conv.stride
    return {"kernel_shape": list(conv.kernel_size), "strides": [sh, sw],
            "pads": [ph, pw, ph, pw]}


def _pool_attrs(pool) -> dict:
    (ph, pw) = pool.padding
    return {"kernel_shape": list(pool.kernel_size), "strides": list(pool.stride),
            "pads": [ph, pw, ph, pw]}
