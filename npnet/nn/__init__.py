"""torch.nn's names for everything npnet has: ``import npnet.nn as nn``.

The seed's ``class LeNet5(nn.Module)``, written for torch, runs on npnet with only its import
changed: modules register as attributes, ``forward`` is plain code, and ``backward`` is the
replay of what forward recorded (npnet/autograd.py).
"""
from ..layers import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d,
                      ConvReLUMaxPool2d, Dropout, Flatten, Identity, LeakyReLU, Linear,
                      MaxPool2d, ReLU, Sigmoid, Tanh, init_generator)
from ..losses import CrossEntropyLoss, MSELoss
from ..module import Module, Parameter
from ..sequential import Sequential
from . import functional

__all__ = ["Module", "Parameter", "Sequential", "Conv2d", "Linear", "MaxPool2d",
           "AvgPool2d", "AdaptiveAvgPool2d", "ReLU", "Tanh", "Sigmoid", "LeakyReLU",
           "BatchNorm1d", "BatchNorm2d", "Dropout", "Flatten", "Identity",
           "ConvReLUMaxPool2d", "CrossEntropyLoss", "MSELoss", "functional",
           "init_generator"]
