"""torch.nn's names for everything npnet has: ``import npnet.nn as nn``.

The seed's ``class LeNet5(nn.Module)``, written for torch, runs on npnet with only its import
changed: modules register as attributes, ``forward`` is plain code, and ``backward`` is the
replay of what forward recorded (npnet/autograd.py).
"""
from ..layers import (AvgPool2d, Conv2d, ConvReLUMaxPool2d, Flatten, Identity, Linear,
                      MaxPool2d, ReLU, Sigmoid, Tanh, init_generator)
from ..losses import CrossEntropyLoss, MSELoss
from ..module import Module, Parameter
from ..sequential import Sequential
from . import functional

__all__ = ["Module", "Parameter", "Sequential", "Conv2d", "Linear", "MaxPool2d",
           "AvgPool2d", "ReLU", "Tanh", "Sigmoid", "Flatten", "Identity",
           "ConvReLUMaxPool2d", "CrossEntropyLoss", "MSELoss", "functional",
           "init_generator"]
