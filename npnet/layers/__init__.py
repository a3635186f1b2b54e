"""The layers: one file per concept, each with its forward and backward side by side."""
from .activation import LeakyReLU, ReLU, Sigmoid, Tanh
from .base import Layer, Parameter, init_generator
from .batchnorm import BatchNorm1d, BatchNorm2d
from .conv import Conv2d
from .dropout import Dropout
from .flatten import Flatten
from .fused import ConvReLUMaxPool2d
from .identity import Identity
from .linear import Linear
from .pool import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d

__all__ = ["Layer", "Parameter", "Conv2d", "Linear", "MaxPool2d", "AvgPool2d", "ReLU",
           "Tanh", "Sigmoid", "LeakyReLU", "Flatten", "Identity", "ConvReLUMaxPool2d",
           "BatchNorm1d", "BatchNorm2d", "Dropout", "AdaptiveAvgPool2d", "init_generator"]
