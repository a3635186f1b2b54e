"""Data: IDX files, MNIST and Fashion-MNIST (fetched with SHA-256 checks), mini-batches.

    images, labels = load_mnist(split="train")              # (60000, 28, 28) uint8, (60000,)
    (x_tr, y_tr), (x_val, y_val) = train_val_split(images, labels)   # 50,000 / 10,000
    x_tr = normalize(x_tr, MNIST_MEAN, MNIST_STD)            # (50000, 1, 28, 28) float32
    for xb, yb in iterate_batches(x_tr, y_tr, 64, shuffle=True, rng=rng): ...

From the shell: ``python -m npnet.data fetch mnist [--root DIR]``.
"""
from .idx import read_idx
from .loader import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    MNIST_MEAN,
    MNIST_STD,
    NORMALIZATION,
    DataLoader,
    iterate_batches,
    normalize,
    random_flip,
    random_shift,
)
from .mnist import (
    CLASSES,
    FASHION_MNIST_CLASSES,
    FetchError,
    default_root,
    fetch,
    load_fashion_mnist,
    load_mnist,
    train_val_split,
)

__all__ = [
    "read_idx",
    "load_mnist", "load_fashion_mnist", "fetch", "default_root", "FetchError",
    "train_val_split",
    "iterate_batches", "DataLoader", "normalize", "random_flip", "random_shift",
    "MNIST_MEAN", "MNIST_STD", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD",
    "FASHION_MNIST_CLASSES", "CLASSES", "NORMALIZATION",
]
