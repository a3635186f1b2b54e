"""LeNet-5: as a Sequential (``lenet5()``), as the seed's class (``LeNet5``), and LeCun's form;
and a small ResNet (``resnet()``, the classes ``BasicBlock`` and ``ResNet``; docs/resnet.md).

    input 1x28x28 -> conv1 6@5x5 (padding 2) -> ReLU -> max-pool 2   6x14x14
                  -> conv2 16@5x5            -> ReLU -> max-pool 2   16x5x5
                  -> conv3 120@5x5           -> ReLU                 120x1x1
                  -> flatten -> fc1 84 -> ReLU -> fc2 10             logits

conv1 pads 28x28 to 32x32, the size LeCun fed: without it conv3 meets a 4x4 map and fails
(the seed's PyTorch class does).  61,706 parameters.  docs/lenet5.md walks through it.

``lenet5()`` and ``LeNet5()`` compute the same function with the same state_dict keys; the
first is a chain of named layers, the second is the seed's class as its author wrote it
for torch, on ``npnet.nn``.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from . import nn
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


class LeNet5(nn.Module):
    """The seed document's class, written for torch, on ``npnet.nn`` (only the import
    changed) -- with ``padding=2`` on conv1, so that it takes MNIST's 28x28 digits (the
    seed's own conv1 has none and needs LeCun's 32x32).

    One ReLU and one max-pool serve every layer: each call is recorded on its own, so
    backward knows which input each call saw (docs/autograd.md).
    """

    def __init__(self):
        super(LeNet5, self).__init__()
        self.conv1 = nn.Conv2d(in_channels=1, out_channels=6, kernel_size=5, stride=1, padding=2)
        self.conv2 = nn.Conv2d(in_channels=6, out_channels=16, kernel_size=5, stride=1, padding=0)
        self.conv3 = nn.Conv2d(in_channels=16, out_channels=120, kernel_size=5, stride=1, padding=0)
        self.fc1 = nn.Linear(in_features=120, out_features=84)
        self.fc2 = nn.Linear(in_features=84, out_features=10)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, x):
        x = self.relu(self.conv1(x))
        x = self.pool(x)
        x = self.relu(self.conv2(x))
        x = self.pool(x)
        x = self.relu(self.conv3(x))
        x = x.view(x.size(0), -1)
        x = self.relu(self.fc1(x))
        x = self.fc2(x)
        return x


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm, and the input added back (He et al., 2016)::

        out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))

    The shortcut is the identity, or -- where the block changes the shape (a stride of 2,
    more channels) -- a 1x1 convolution with batch norm that projects x to the new shape.
    The convolutions have no bias: the batch norm after each would cancel it.
    """

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride,
                               padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1,
                               padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = nn.functional.add(out, self.shortcut(x))      # the residual sum
        return self.relu(out)


class ResNet(nn.Module):
    """A small residual network for 28x28 grey images::

        input 1x28x28 -> conv 3x3, 32 -> BN -> ReLU -> max-pool 2            32x14x14
                      -> block(32 -> 32)                                    32x14x14
                      -> block(32 -> 64, stride 2; projection shortcut)     64x7x7
                      -> block(64 -> 128, stride 2; projection shortcut)   128x4x4
                      -> global average pool -> fc 10                      logits

    He et al.'s form, one block per stage, with a stem that pools to 14x14 first as
    theirs does (a 3x3 convolution rather than 7x7, for small images): 28x28 Fashion-MNIST
    images lose little at 14x14, and the same multiply-adds then buy twice the channels.

    Args:
        num_classes (int): default 10.
        widths (three ints): the channels of the three stages, default (32, 64, 128).
        blocks (int): residual blocks per stage, default 1.
    """

    def __init__(self, num_classes=10, widths=(32, 64, 128), blocks=1):
        super().__init__()
        w1, w2, w3 = widths
        self.conv1 = nn.Conv2d(1, w1, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.layer1 = self._stage(w1, w1, blocks, stride=1)
        self.layer2 = self._stage(w1, w2, blocks, stride=2)
        self.layer3 = self._stage(w2, w3, blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, num_classes)

    @staticmethod
    def _stage(in_channels, out_channels, blocks, stride):
        return nn.Sequential(BasicBlock(in_channels, out_channels, stride),
                             *[BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)])

    def forward(self, x):
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.avgpool(x)
        x = x.view(x.size(0), -1)
        return self.fc(x)


def resnet(rng=None, dtype=np.float32, **kwargs) -> ResNet:
    """The small ResNet (:class:`ResNet`), its weights drawn from ``rng``.

    Args:
        rng (np.random.Generator): draws the initial weights (torch's default init).
        dtype: np.float32 (default) or np.float64.
        kwargs: passed to :class:`ResNet` (num_classes, widths, blocks).
    """
    with nn.init_generator(np.random.default_rng() if rng is None else rng):
        model = ResNet(**kwargs)
    return model.to(dtype)
