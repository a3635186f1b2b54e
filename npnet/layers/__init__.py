"""The layers: one file per concept, each with its forward and backward side by side."""
from .activation import ReLU, Sigmoid, Tanh
from .base import Layer, Parameter, init_generator
from .conv import Conv2d
from .flatten import Flatten
from .fused import ConvReLUMaxPool2d
from .identity import Identity
from .linear import Linear
from .pool import AvgPool2d, MaxPool2d

__all__ = ["Layer", "Parameter", "Conv2d", "Linear", "MaxPool2d", "AvgPool2d", "ReLU",
           "Tanh", "Sigmoid", "Flatten", "Identity", "ConvReLUMaxPool2d", "init_generator"]
