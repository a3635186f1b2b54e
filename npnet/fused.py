"""The fused fast path: Sequential runs Conv2d -> ReLU -> MaxPool2d(2) as one kernel.

The layers in ``npnet/layers`` are written to be read: one operation per call, each a
pass over a batch-sized array.  When a :class:`~npnet.Sequential` meets the chain

    Conv2d (stride 1) -> ReLU -> MaxPool2d (2x2, stride 2, no padding)

it runs the three as one Numba kernel per few samples instead (``npnet/kernels/fused.py``):
the sample's pre-activations and pooled output stay in the core's cache, and no column
matrix is built at all.  A Conv2d whose kernel covers its whole input (LeNet-5's conv3)
runs as one matmul (:class:`ConvAsLinear`).  The maths is the layers' own;
tests/test_fused.py checks outputs and every gradient against the unfused layers.

It applies only where it computes what the layers would, up to float32 rounding (the same
sums in another order):

* float32 input and layers (float64 runs the layers: they are the reference);
* no hook on any layer of the Sequential (hooks must see each layer's input and output);
* the three layers in the same mode (all training or all eval), and none with its
  ``forward`` or ``backward`` replaced on the instance (a monkeypatch runs as written).

Anything else runs the layers one by one.  Switch it off globally with
``npnet.fused.enabled = False``, or per model with ``Sequential(..., fuse=False)``.

While a fused block runs, its layers' own caches are emptied (an older unfused forward's
must not serve this pass): call backward through the Sequential, as training does, not on
one of its layers.
"""
from __future__ import annotations

import numpy as np

from .kernels.fused import chunk_size, conv_relu_pool_backward, conv_relu_pool_forward
from .layers.activation import ReLU
from .layers.base import check_array, check_grad, no_cache_error
from .layers.conv import Conv2d
from .layers.pool import MaxPool2d

#: Global switch: False makes every Sequential run its layers one by one.
enabled = True


def _clear_caches(layers) -> None:
    """The fused step runs instead of these layers' forwards: drop what older forwards
    left, so that a backward called on the layers themselves fails instead of reusing it."""
    for layer in layers:
        layer._cache = None


def _plain(layers) -> bool:
    """No layer has its forward or backward replaced on the instance (e.g. by a test)."""
    return not any("forward" in vars(layer) or "backward" in vars(layer) for layer in layers)


class ConvReLUPool:
    """One fused step standing for ``conv -> relu -> pool`` in a Sequential."""

    def __init__(self, conv: Conv2d, relu: ReLU, pool: MaxPool2d):
        self.conv, self.relu, self.pool = conv, relu, pool
        self.layers = (conv, relu, pool)
        self._cache = None
        self._zero_bias = None
        self._dw_n = self._db_n = None   # partial-gradient buffers, reused between steps

    @staticmethod
    def matches(conv, relu, pool) -> bool:
        """Does the layer pattern fit the kernel (whatever the input)?"""
        return (type(conv) is Conv2d and type(relu) is ReLU and type(pool) is MaxPool2d
                and conv.stride == (1, 1) and pool.kernel_size == (2, 2)
                and pool.stride == (2, 2) and pool.padding == (0, 0))

    def usable(self, x) -> bool:
        """Can this input take the fused path (else the caller runs the layers)?"""
        conv = self.conv
        return (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 4
                and conv.dtype == np.float32 and _plain(self.layers)
                and conv.training == self.relu.training == self.pool.training)

    def forward(self, x):
        conv = self.conv
        check_array(conv, x, 4)
        conv_shape = conv.output_shape(x.shape)         # (N, F, OH, OW); ValueError if bad
        N, F, PH, PW = self.pool.output_shape(conv_shape)  # ValueError if the map is < 2x2
        x = np.ascontiguousarray(x)
        (kh, kw), (ph, pw) = conv.kernel_size, conv.padding
        w2 = conv.params["weight"].reshape(F, -1)        # (F, K), a view
        b = conv.params.get("bias")
        if b is None:
            if self._zero_bias is None or self._zero_bias.shape != (F,):
                self._zero_bias = np.zeros(F, dtype=np.float32)
            b = self._zero_bias
        y = np.empty((N, F, PH, PW), dtype=np.float32)
        arg = np.empty((N, F, PH, PW), dtype=np.int8)   # winner 2*i + j of each window
        S = chunk_size(x.shape[2], x.shape[3], kh, kw, ph, pw)   # samples per task
        conv_relu_pool_forward(x, w2, b, kh, kw, ph, pw, S, y, arg)
        _clear_caches(self.layers)
        self._cache = (x, y, arg) if conv.training else None
        return y

    def backward(self, grad_out, need_grad_in=True):
        if self._cache is None:
            raise no_cache_error(self.conv)
        x, y, arg = self._cache
        conv = self.conv
        check_grad(self.pool, grad_out, y.shape, np.float32)
        self._cache = None                 # each forward serves one backward
        N, F = y.shape[:2]
        (kh, kw), (ph, pw) = conv.kernel_size, conv.padding
        w2 = conv.params["weight"].reshape(F, -1)                      # (F, K)
        S = chunk_size(x.shape[2], x.shape[3], kh, kw, ph, pw)         # samples per task
        chunks = -(-N // S)
        if self._dw_n is None or self._dw_n.shape != (chunks, F, w2.shape[1]) \
                or self._db_n.shape != (N, F):
            self._dw_n = np.empty((chunks, F, w2.shape[1]), dtype=np.float32)  # per chunk
            self._db_n = np.empty((N, F), dtype=np.float32)                    # per sample
        dw_c, db_n = self._dw_n, self._db_n                            # overwritten
        grad_in = np.empty(x.shape, dtype=np.float32) if need_grad_in else x[:0]
        conv_relu_pool_backward(x, w2, np.ascontiguousarray(w2.T), kh, kw, ph, pw, S,
                                np.ascontiguousarray(grad_out), y, arg, dw_c, db_n,
                                grad_in, need_grad_in)
        # sum the partial gradients in chunk order: the same result for any thread count
        conv.grads["weight"] += dw_c.sum(axis=0).reshape(conv.grads["weight"].shape)
        if "bias" in conv.grads:
            conv.grads["bias"] += db_n.sum(axis=0)
        return grad_in if need_grad_in else None


class ConvAsLinear:
    """A Conv2d whose kernel covers its whole (unpadded) input, run as one matmul.

    Then OH = OW = 1 and the single column of sample n is x[n] flattened, so the
    convolution is a Linear layer on (N, C*H*W): one (N, K) @ (K, F) product instead of
    N matrix-vector products (LeNet-5's conv3: 16x5x5 -> 120x1x1).
    """

    def __init__(self, conv: Conv2d):
        self.conv = conv
        self.layers = (conv,)
        self._cache = None

    @staticmethod
    def matches(conv) -> bool:
        return type(conv) is Conv2d and conv.padding == (0, 0)

    def usable(self, x) -> bool:
        conv = self.conv
        # float32 only, like the fused blocks: float64 runs the layers, the reference
        return (isinstance(x, np.ndarray) and x.ndim == 4 and x.dtype == np.float32
                and conv.dtype == np.float32 and _plain(self.layers)
                and x.shape[2:] == conv.kernel_size and x.shape[1] == conv.in_channels)

    def forward(self, x):
        conv = self.conv
        N, F = x.shape[0], conv.out_channels
        x2 = x.reshape(N, -1)                                    # (N, K): the columns
        y = x2 @ conv.params["weight"].reshape(F, -1).T          # (N, K) @ (K, F)
        if "bias" in conv.params:
            y += conv.params["bias"]
        _clear_caches(self.layers)
        self._cache = x2 if conv.training else None
        return y.reshape(N, F, 1, 1)

    def backward(self, grad_out, need_grad_in=True):
        conv = self.conv
        x2 = self._cache
        if x2 is None:
            raise no_cache_error(conv)
        N, F = x2.shape[0], conv.out_channels
        check_grad(conv, grad_out, (N, F, 1, 1), conv.dtype)
        self._cache = None                 # each forward serves one backward
        g = grad_out.reshape(N, F)
        w2 = conv.params["weight"].reshape(F, -1)
        conv.grads["weight"] += (g.T @ x2).reshape(conv.grads["weight"].shape)  # (F, K)
        if "bias" in conv.grads:
            conv.grads["bias"] += g.sum(axis=0)
        if not need_grad_in:
            return None
        return (g @ w2).reshape((N, conv.in_channels, *conv.kernel_size))


def build_plan(layers):
    """Group a Sequential's layers into steps: fused blocks where they match, else layers.

    Returns a list whose items are layers or fused steps (ConvReLUPool, ConvAsLinear),
    or None when nothing fuses (the Sequential then runs its ordinary loop).
    """
    plan, i, fused_any = [], 0, False
    while i < len(layers):
        if i + 2 < len(layers) and ConvReLUPool.matches(*layers[i:i + 3]):
            plan.append(ConvReLUPool(*layers[i:i + 3]))
            fused_any = True
            i += 3
        elif ConvAsLinear.matches(layers[i]):
            plan.append(ConvAsLinear(layers[i]))
            fused_any = True
            i += 1
        else:
            plan.append(layers[i])
            i += 1
    return plan if fused_any else None


_FUSED = (ConvReLUPool, ConvAsLinear)


def has_hooks(layers) -> bool:
    """True if any layer (or nested layer) has a forward or backward hook."""
    for layer in layers:
        if layer._forward_hooks or layer._backward_hooks:
            return True
        inner = getattr(layer, "layers", None)
        if isinstance(inner, dict) and has_hooks(list(inner.values())):
            return True
    return False


class Plan:
    """A Sequential's fused schedule; runs forward and the matching backward."""

    def __init__(self, layers):
        self.key = tuple(id(layer) for layer in layers)
        self.steps = build_plan(layers)
        self._ran = None          # per step: True if the forward took the fused path
        self.last_path = None     # the same, kept after backward (for tests and profiling)

    def forward(self, x):
        ran = []
        for step in self.steps:
            if isinstance(step, _FUSED):
                if step.usable(x):
                    x = step.forward(x)
                    ran.append(True)
                    continue
                for layer in step.layers:
                    x = layer.forward(x)
                ran.append(False)
            else:
                x = step.forward(x)
                ran.append(False)
        self._ran = self.last_path = ran
        return x

    def backward(self, grad_out, need_grad_in=True):
        ran = self._ran
        if ran is None:
            raise RuntimeError("Sequential: backward() needs a forward() in training mode "
                               "first (each forward allows one backward)")
        for i in range(len(self.steps) - 1, -1, -1):
            step, first = self.steps[i], i == 0
            skip = first and not need_grad_in
            if isinstance(step, _FUSED) and ran[i]:
                grad_out = step.backward(grad_out, need_grad_in=not skip)
                continue
            layers = step.layers if isinstance(step, _FUSED) else (step,)
            for j in range(len(layers) - 1, -1, -1):
                layer = layers[j]
                if skip and j == 0 and layer.can_skip_grad_in:
                    grad_out = layer.backward(grad_out, need_grad_in=False)
                else:
                    grad_out = layer.backward(grad_out)
        self._ran = None          # spent only now: a refused grad_out can be retried
        return grad_out
