"""npnet: a convolutional-network framework written from scratch in NumPy.

Every layer's forward and backward pass is written by hand (npnet/layers/), the heavy
loops are Numba kernels (npnet/kernels/) with plain-NumPy references beside them, models
are plain code on ``npnet.nn`` whose backward replays what their forward recorded
(npnet/autograd.py), and the gradients are checked numerically (npnet.gradcheck; for a
layer of your own, npnet.testing.assert_layer_correct) and against PyTorch (tests/).
"""
from . import threads  # noqa: F401  (sets the threading policy before any kernel runs)
from . import malloc  # noqa: F401  (glibc keeps freed memory for the next step: npnet/malloc.py)
from . import (autograd, checkpoint, data, fusion, hooks, models, nn, onnx,  # noqa: F401
               optim, testing)
from .gradcheck import GradcheckError, TensorCheck, gradcheck
from .layers import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d,
                     ConvReLUMaxPool2d, Dropout, Flatten, Identity, Layer, LeakyReLU, Linear,
                     MaxPool2d, Parameter, ReLU, Sigmoid, Tanh)
from .io import load, load_weights, save, save_weights
from .losses import CrossEntropyLoss, MSELoss
from .models import lenet5, lenet5_classic
from .module import Module
from .sequential import Sequential
from .summary import summary
from .tensor import Deferred, Tensor
from .threads import get_num_threads, set_num_threads

__version__ = "0.2.0"
