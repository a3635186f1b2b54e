"""ConvReLUMaxPool2d: Conv2d -> ReLU -> 2x2 max-pool as one kernel, a layer of its own.

It computes exactly the function of the three layers it stands for, in fewer passes over
memory: the kernel (``npnet/kernels/fused.py``) convolves a few samples at a time, and
while their pre-activations sit in the core's cache it pools them and applies the ReLU,
so only the pooled output and a one-byte winner index per window are ever written.  Three
facts make that possible (docs/layers/fused.md derives them):

* **max then ReLU.**  relu is increasing, so max(relu(z)) = relu(max(z)): pool the
  pre-activations, then apply relu once per window (a quarter of the values).
* **the winner index.**  The gradient of a window goes to its first maximum, and only if
  that maximum is > 0 (else relu's derivative is 0): backward needs the index (0..3) of
  the winner and the sign of the output, nothing else of the pre-activations.
* **the shifted matmul.**  With stride 1, row k = (c, i, j) of a sample's im2col matrix is
  the padded sample read from offset c*Hp*Wp + i*Wp + j: the matmul reads the input in
  place, and no column matrix is built.

Inside a model's forward npnet runs it by itself wherever a Conv2d's output goes through a
ReLU into such a max-pool (npnet/fusion.py); ``npnet.autograd.tape_of(model)`` shows where.
"""
from __future__ import annotations

import numpy as np

from ..kernels.fused import (chunk_size, conv_relu_pool_backward,
                             conv_relu_pool_backward_serial, conv_relu_pool_forward,
                             conv_relu_pool_forward_serial, grad_input_weights, padded_shape,
                             tasks)
from .activation import ReLU
from .base import Module, add_grad, check_array, check_dtype, check_grad, no_cache_error, \
    out_size
from .conv import Conv2d
from .pool import MaxPool2d


def _one_line(m) -> str:
    return repr(m) if "\n" not in repr(m) else f"{type(m).__name__}(...)"


class ConvReLUMaxPool2d(Module):
    """``pool(relu(conv(x)))`` for a stride-1 Conv2d and a 2x2 MaxPool2d of stride 2.

    Args:
        conv (Conv2d): the convolution; its weight and bias are this layer's parameters
            (shared, not copied: training this layer trains the conv).
        relu (ReLU), pool (MaxPool2d): the layers it stands for; default ``ReLU()`` and
            ``MaxPool2d(2)``.  They are read at every call: a conv whose stride is no
            longer 1, or a pool that is no longer 2x2 of stride 2 without padding, is
            refused with a ValueError.

    Shape:
        (N, C, H, W) -> (N, F, OH // 2, OW // 2), with (OH, OW) the conv's output size.
    """

    can_skip_grad_in = True

    def __init__(self, conv, relu=None, pool=None):
        super().__init__()
        relu = ReLU() if relu is None else relu
        pool = MaxPool2d(2) if pool is None else pool
        for name, m, cls in (("conv", conv, Conv2d), ("relu", relu, ReLU),
                             ("pool", pool, MaxPool2d)):
            if type(m) is not cls:
                raise ValueError(f"ConvReLUMaxPool2d: {name} must be a {cls.__name__}, got "
                                 f"{type(m).__name__}")
        self.conv, self.relu, self.pool = conv, relu, pool

    # The three layers are read from ``_modules`` in the methods that run at every call:
    # ``self.conv`` goes through Module.__getattr__, which Python calls only after the
    # ordinary lookup has failed and made an AttributeError (about 1.5 us on Python 3.11,
    # against 0.1 us for the dict).
    @property
    def stands_for(self):
        """The layers this one computes, in order."""
        m = self._modules
        return (m["conv"], m["relu"], m["pool"])

    # the mode is the conv's: a fused layer made from a model's layers follows the model
    training = property(lambda self: self._modules["conv"].training,
                        lambda self, mode: setattr(self._modules["conv"], "training", mode))

    @staticmethod
    def fits(conv, relu, pool) -> bool:
        """Can the kernel compute ``pool(relu(conv(x)))`` for these three layers?"""
        return (type(conv) is Conv2d and type(relu) is ReLU and type(pool) is MaxPool2d
                and conv.stride == (1, 1) and pool.kernel_size == (2, 2)
                and pool.stride == (2, 2) and pool.padding == (0, 0))

    def forward(self, x):
        conv, relu, pool = self.stands_for
        if not self.fits(conv, relu, pool):              # read at every call: never stale
            raise ValueError(f"{type(self).__name__}: the kernel computes a Conv2d of stride "
                             f"(1, 1), a ReLU and a 2x2 MaxPool2d of stride 2 without "
                             f"padding; got {_one_line(conv)}, {_one_line(relu)}, "
                             f"{_one_line(pool)}")
        check_array(self, x, 4)
        w, b = conv.params["weight"], conv.params.get("bias")
        check_dtype(self, x, w)
        _, _, OH, OW = z_shape = conv.output_shape(x.shape)   # the convolution's output
        N, F, PH, PW = pool.output_shape(z_shape)
        (kh, kw), (ph, pw) = w.shape[2:], conv.padding
        x = np.ascontiguousarray(x)
        w2 = w.reshape(F, -1)                                  # (F, K), a view
        has_bias = b is not None
        if not has_bias:
            b = np.zeros(F, dtype=w.dtype)
        y = np.empty((N, F, PH, PW), dtype=x.dtype)
        # the winner 2*i + j of each window, for backward: none in eval mode
        training = conv.training
        arg = np.empty((N if training else 0, F, PH, PW), dtype=np.int8)
        S = chunk_size(x.shape[2], x.shape[3], kh, kw, ph, pw)    # samples per task
        xps = np.empty(padded_shape(x.shape, kw, ph, pw, S), dtype=x.dtype)  # x, padded
        # one chunk (an image or two): the kernel's twin without the thread pool (its
        # docstring says why); the same operations, so the same result
        kernel = conv_relu_pool_forward if tasks(N, S) > 1 else conv_relu_pool_forward_serial
        kernel(x, w2, b, kh, kw, ph, pw, OH, OW, S, y, arg, xps)
        # backward reads the padded copy the kernel wrote, not x, and W as it is now (in
        # the layout dL/dx's product reads, made here: a copy the caller cannot change)
        self._cache = (xps, x.shape, grad_input_weights(w), w.shape, has_bias, (ph, pw),
                       y, arg) if training else None
        return y

    def backward(self, grad_out, need_grad_in=True):
        """dL/dy (N, F, PH, PW) -> dL/dx (N, C, H, W); adds dL/dW, dL/db into the conv's
        grads.  ``need_grad_in=False`` skips dL/dx and returns None."""
        if self._cache is None:
            raise no_cache_error(self)
        xps, x_shape, w2t, w_shape, has_bias, (ph, pw), y, arg = self._cache  # as forward saw
        check_grad(self, grad_out, y.shape, w2t.dtype)
        self._cache = None                 # each forward serves one backward
        (N, F), (kh, kw) = y.shape[:2], w_shape[2:]
        S = chunk_size(x_shape[2], x_shape[3], kh, kw, ph, pw)
        OH, OW = out_size(x_shape[2], kh, 1, ph), out_size(x_shape[3], kw, 1, pw)
        T = tasks(N, S)
        dw_c = np.empty((T, F, w2t.shape[0]), dtype=w2t.dtype)            # one per chunk
        db_n = np.empty((N, F), dtype=w2t.dtype)                          # one per sample
        grad_in = np.empty(x_shape if need_grad_in else (0, *x_shape[1:]), dtype=w2t.dtype)
        kernel = conv_relu_pool_backward if T > 1 else conv_relu_pool_backward_serial
        kernel(xps, w2t, kh, kw, ph, pw, OH, OW, S, np.ascontiguousarray(grad_out), y, arg,
               dw_c, db_n, grad_in, need_grad_in)
        # sum the partial gradients in chunk order: the same result for any thread count
        conv = self._modules["conv"]
        add_grad(conv, "weight", dw_c.sum(axis=0).reshape(w_shape))
        if has_bias:
            add_grad(conv, "bias", db_n.sum(axis=0))
        return grad_in if need_grad_in else None
