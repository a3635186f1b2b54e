"""Mini-batches and input normalisation.

``normalize`` turns uint8 images into the float32 NCHW tensors the layers take::

    x = (pixels / 255 - mean) / std          (N, H, W) uint8 -> (N, 1, H', W') float32

``iterate_batches`` (and ``DataLoader``, which repeats it epoch after epoch) cuts arrays
into mini-batches; shuffling draws from an explicit ``np.random.Generator``, never from
global state, so a run is reproduced by its seed.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

# Mean and standard deviation of the training pixels, scaled to [0, 1].
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
#: (mean, std) by dataset name, as the examples' --dataset flags spell it.
NORMALIZATION = {"mnist": (MNIST_MEAN, MNIST_STD),
                 "fashion-mnist": (FASHION_MNIST_MEAN, FASHION_MNIST_STD)}


def normalize(images: np.ndarray, mean: float, std: float, pad_to: int | None = None,
              dtype=np.float32) -> np.ndarray:
    """Scale uint8 images to ``(x / 255 - mean) / std`` and add the channel axis.

    Args:
        images: uint8, ``(N, H, W)`` or ``(N, 1, H, W)``.
        mean, std: statistics of the pixels scaled to [0, 1], e.g. ``MNIST_MEAN``,
            ``MNIST_STD``.
        pad_to: if given, zero-pad each image (before normalising, so the border is the
            black background: ``-mean / std`` after) to ``pad_to x pad_to``, centred; the
            odd pixel, if any, goes bottom/right.  LeNet-5 takes MNIST at 32 x 32.
        dtype: float dtype of the result.

    Returns:
        ``(N, 1, H', W')`` array of ``dtype``, where ``H' = W' = pad_to`` if given, else
        ``H, W``.

    Raises:
        ValueError: images not uint8 (normalising twice is a quiet, common bug), not of
            those shapes, ``pad_to`` smaller than an image side, or ``std <= 0``.
    """
    if images.dtype != np.uint8:
        raise ValueError(f"normalize: expected uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None]  # (N, H, W) -> (N, 1, H, W)
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"normalize: expected images of shape (N, H, W) or (N, 1, H, W), "
                         f"got {images.shape}")
    if std <= 0:
        raise ValueError(f"normalize: std must be positive, got {std}")
    h, w = images.shape[2:]
    if pad_to is not None:
        if pad_to < max(h, w):
            raise ValueError(f"normalize: pad_to={pad_to} is smaller than the images ({h}x{w})")
        top, left = (pad_to - h) // 2, (pad_to - w) // 2
        pad = ((0, 0), (0, 0), (top, pad_to - h - top), (left, pad_to - w - left))
        images = np.pad(images, pad)  # (N, 1, H, W) -> (N, 1, pad_to, pad_to), zeros

    out = images.astype(dtype)  # a fresh array, so the in-place steps below are safe
    # In place, with Python floats: the result keeps `dtype` (no float64 temporaries).
    out /= 255.0
    out -= mean
    out /= std
    return out


def iterate_batches(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool = False,
                    rng: np.random.Generator | None = None,
                    drop_last: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(xb, yb)`` mini-batches covering every example once.

    Args:
        x: ``(N, ...)``.
        y: ``(N, ...)``, the same N.
        batch_size: examples per batch, ``>= 1``; the last batch may be smaller.
        shuffle: visit the examples in the order ``rng.permutation(N)``.
        rng: the ``np.random.Generator`` to shuffle with; required when ``shuffle``.
        drop_last: leave out a last batch smaller than ``batch_size``.

    Yields:
        ``xb`` ``(B, ...)`` and ``yb`` ``(B, ...)``, ``B <= batch_size``.  Without shuffling
        they are views of ``x`` and ``y``; with it, copies.

    Raises:
        ValueError: ``batch_size < 1``, ``len(x) != len(y)``, or ``shuffle`` without ``rng``.
        These are raised at the call, not at the first ``next``.
    """
    _check_batches(x, y, batch_size, shuffle, rng)
    return _batches(x, y, batch_size, shuffle, rng, drop_last)


def _check_batches(x, y, batch_size, shuffle, rng) -> None:
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} and {len(y)}")
    if shuffle and not isinstance(rng, np.random.Generator):
        raise ValueError("shuffle=True needs rng, a np.random.Generator "
                         "(e.g. np.random.default_rng(0)); npnet never uses global random state")


def _batches(x, y, batch_size, shuffle, rng, drop_last):
    n = len(x)
    order = rng.permutation(n) if shuffle else None  # (N,)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        if order is None:
            yield x[start:end], y[start:end]
        else:
            idx = order[start:end]  # (B,)
            yield x[idx], y[idx]


class DataLoader:
    """``iterate_batches`` as an object to loop over once per epoch.

    Each ``iter(loader)`` is a new epoch; with ``shuffle`` it draws a fresh permutation from
    ``rng``, which advances, so epochs differ but the whole run is fixed by ``rng``'s seed.
    ``len(loader)`` is the number of batches in an epoch.

    Example::

        loader = DataLoader(x_train, y_train, 64, shuffle=True, rng=np.random.default_rng(0))
        for epoch in range(10):
            for xb, yb in loader:
                ...
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool = False,
                 rng: np.random.Generator | None = None, drop_last: bool = False):
        _check_batches(x, y, batch_size, shuffle, rng)
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.rng, self.drop_last = (
            batch_size, shuffle, rng, drop_last)

    def __len__(self) -> int:
        full, rest = divmod(len(self.x), self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return _batches(self.x, self.y, self.batch_size, self.shuffle, self.rng,
                        self.drop_last)


def random_shift(x: np.ndarray, max_shift: int, rng: np.random.Generator,
                 fill: float | None = None) -> np.ndarray:
    """Translate each image by its own random (dy, dx) in [-max_shift, max_shift] pixels.

    The cheapest augmentation that helps on digits: a digit moved by a pixel or two is the
    same digit, and the network learns not to care where it sits.

    Args:
        x: ``(N, C, H, W)`` float images (already normalised).
        max_shift: the largest shift, in pixels, ``>= 0``.
        rng: the ``np.random.Generator`` the shifts are drawn from.
        fill: the value shifted-in pixels get; default ``x.min()``, the background of a
            normalised digit.

    Returns:
        a new ``(N, C, H, W)`` array of ``x``'s dtype.
    """
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        raise ValueError(f"random_shift: expected (N, C, H, W) images, got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    if not isinstance(max_shift, (int, np.integer)) or max_shift < 0:
        raise ValueError(f"random_shift: max_shift must be an int >= 0, got {max_shift!r}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError("random_shift needs rng, a np.random.Generator")
    n, _, h, w = x.shape
    s = int(max_shift)
    fill = float(x.min()) if fill is None else fill
    padded = np.pad(x, ((0, 0), (0, 0), (s, s), (s, s)), constant_values=fill)
    dy = rng.integers(0, 2 * s + 1, size=n)                    # (N,) offset of each crop
    dx = rng.integers(0, 2 * s + 1, size=n)
    rows = dy[:, None] + np.arange(h)                          # (N, H)
    cols = dx[:, None] + np.arange(w)                          # (N, W)
    # (N, 1, 1) x (N, H, 1) x (N, 1, W) broadcast: one gather, crop n at (dy[n], dx[n])
    out = padded[np.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))     # (N, H, W, C) -> (N, C, H, W)


def random_flip(x: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Mirror each image left-right with probability ``p``, each its own draw.

    For pictures of things a mirror does not change (a shirt, a shoe): not for digits.

    Args:
        x: ``(N, C, H, W)`` images.
        rng: the ``np.random.Generator`` the choices are drawn from.
        p: the probability of mirroring an image, in [0, 1].

    Returns:
        a new ``(N, C, H, W)`` array of ``x``'s dtype.
    """
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        raise ValueError(f"random_flip: expected (N, C, H, W) images, got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError("random_flip needs rng, a np.random.Generator")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"random_flip: p must be a probability in [0, 1], got {p!r}")
    flip = rng.random(len(x)) < p                              # (N,) which to mirror
    out = x.copy()
    out[flip] = x[flip, :, :, ::-1]                            # reverse the columns
    return out
