"""LeNet-5, as the seed document draws it, and LeCun's classic form for comparison.

    input 1x28x28 -> conv1 6@5x5 (padding 2) -> ReLU -> max-pool 2   6x14x14
                  -> conv2 16@5x5            -> ReLU -> max-pool 2   16x5x5
                  -> conv3 120@5x5           -> ReLU                 120x1x1
                  -> flatten -> fc1 84 -> ReLU -> fc2 10             logits

conv1 pads 28x28 to 32x32, the size LeCun fed: without it conv3 meets a 4x4 map and fails
(the seed's PyTorch class does).  61,706 parameters.  docs/lenet5.md walks through it.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .layers import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Tanh
from .sequential import Sequential


def _lenet(act, pool, rng, dtype):
    rng = np.random.default_rng() if rng is None else rng
    kw = dict(dtype=dtype, rng=rng)
    return Sequential(OrderedDict([
        ("conv1", Conv2d(1, 6, 5, padding=2, **kw)), ("act1", act()), ("pool1", pool(2)),
        ("conv2", Conv2d(6, 16, 5, **kw)), ("act2", act()), ("pool2", pool(2)),
        ("conv3", Conv2d(16, 120, 5, **kw)), ("act3", act()),
        ("flatten", Flatten()),
        ("fc1", Linear(120, 84, **kw)), ("act4", act()),
        ("fc2", Linear(84, 10, **kw)),
    ]))


def lenet5(rng=None, dtype=np.float32) -> Sequential:
    """The seed's LeNet-5: ReLU and max-pooling; state_dict keys conv1..conv3, fc1, fc2.

    Args:
        rng (np.random.Generator): draws the initial weights (torch's default init).
        dtype: np.float32 (default) or np.float64.
    """
    return _lenet(ReLU, MaxPool2d, rng, dtype)


def lenet5_classic(rng=None, dtype=np.float32) -> Sequential:
    """LeCun's 1998 form: tanh and average pooling (same shapes and parameter names).

    The original's subsampling layers had a trainable coefficient and bias each, and its
    output layer was RBF units; this keeps the shapes and plain average pooling.
    """
    return _lenet(Tanh, AvgPool2d, rng, dtype)
