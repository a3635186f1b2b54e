"""Loss functions: a scalar from the network's output, and its gradient.

A loss is the end of the backward chain, so its contract differs from a layer's::

    loss = crit(output, target)      # same as crit.forward(output, target); a Python float
    grad_in = crit.backward()        # d loss / d output, same shape and dtype as output

``backward`` takes no upstream gradient (d loss / d loss = 1) and, like a layer, releases
what it kept: each ``forward`` serves one ``backward``.  Both losses are mean-reduced, as
torch's defaults (``reduction='mean'``).
"""
from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["CrossEntropyLoss", "MSELoss"]


def _check_float_array(loss: str, name: str, x) -> None:
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        got = f"dtype {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{loss}: expected {name} as a float32 or float64 NumPy array, got {got}")


class CrossEntropyLoss:
    r"""Softmax cross-entropy between class scores and integer labels, averaged over the batch.

    .. math::
        \ell = \frac{1}{N} \sum_n \Big( \log \sum_c e^{x_{n,c}} - x_{n, y_n} \Big)
        \qquad
        \frac{\partial \ell}{\partial x_{n,c}} = \frac{\mathrm{softmax}(x_n)_c - [c = y_n]}{N}

    The log-sum-exp is taken after subtracting each row's maximum,
    :math:`\log \sum_c e^{x_c} = m + \log \sum_c e^{x_c - m}`, so no exponential overflows
    (every :math:`e^{x_c - m} \le 1`, and the largest is exactly 1, so the sum is >= 1 and
    its log never underflows).  It is computed in the logits' own dtype: the shift makes
    float32 as stable as float64.

    Shape:
        - logits: ``(N, C)``, float32 or float64 (raw scores, not probabilities).
        - targets: ``(N,)``, integer labels in ``[0, C)``.
        - returns: a Python ``float``; ``backward()`` returns ``(N, C)`` in the logits' dtype.

    Attributes kept between forward and backward:
        ``_probs`` ``(N, C)`` the softmax probabilities, ``_targets`` ``(N,)``.
    """

    def __init__(self):
        self._probs: np.ndarray | None = None
        self._targets: np.ndarray | None = None

    def __call__(self, logits: np.ndarray, targets: np.ndarray) -> float:
        return self.forward(logits, targets)

    def forward(self, logits: np.ndarray, targets: np.ndarray) -> float:
        targets = self._check(logits, targets)
        logits = np.asarray(logits)          # a plain array (a model's output is a Tensor)
        probs = np.empty(logits.shape, dtype=logits.dtype)    # (N, C), kept for backward
        loss, bad = _cross_entropy(logits, targets, probs)
        if bad >= 0:
            raise ValueError(f"CrossEntropyLoss: target label {targets[bad]} is outside [0, C) "
                             f"with C={logits.shape[1]} classes")
        self._probs, self._targets = probs, targets
        return loss

    def backward(self) -> np.ndarray:
        if self._probs is None:
            raise ValueError(
                "CrossEntropyLoss: backward() called before forward() "
                "(each forward serves one backward)"
            )
        probs, targets = self._probs, self._targets
        self._probs = self._targets = None                     # release the cache
        n = probs.shape[0]
        grad_in = probs                                        # (N, C), reused: no copy needed
        grad_in[np.arange(n), targets] -= 1                    # softmax - onehot
        grad_in /= n                                           # the mean over the batch
        return grad_in

    @staticmethod
    def _check(logits, targets) -> np.ndarray:
        name = "CrossEntropyLoss"
        _check_float_array(name, "logits", logits)
        if logits.ndim != 2:
            raise ValueError(
                f"{name}: expected logits of shape (N, C), got shape {logits.shape}"
            )
        n, c = logits.shape
        if n == 0 or c == 0:
            raise ValueError(f"{name}: expected a non-empty (N, C) batch, got shape {logits.shape}")
        targets = np.asarray(targets)
        if targets.ndim != 1 or targets.shape[0] != n:
            raise ValueError(
                f"{name}: expected targets of shape ({n},) to match logits {logits.shape}, "
                f"got shape {targets.shape}"
            )
        if targets.dtype.kind not in "iu":
            raise ValueError(
                f"{name}: expected integer class labels as targets, got dtype {targets.dtype}"
            )
        return targets                       # labels outside [0, C): _cross_entropy says

    def __repr__(self) -> str:
        return "CrossEntropyLoss()"


@njit(cache=True, nogil=True)
def _cross_entropy(logits, targets, probs):
    """The formula above, one row at a time, in the logits' dtype.

    Row n: m = max_c x[n, c]; log_sum_exp = log(sum_c exp(x[n, c] - m)) (the shift: no
    exponential overflows); log_probs = x[n] - m - log_sum_exp; probs[n] = exp(log_probs),
    kept for backward (torch differentiates the same way: exp of the log-softmax).  Returns
    the mean of -log_probs[n, y_n] (summed in float64) and -1, or, for a label outside
    [0, C), 0 and that label's index n.
    """
    N, C = logits.shape
    total = 0.0
    for n in range(N):
        y = targets[n]
        if y < 0 or y >= C:
            return 0.0, n
        row, p = logits[n], probs[n]
        m = row[0]
        for c in range(1, C):
            m = max(m, row[c])              # a NaN is skipped here, but makes s NaN below
        s = row.dtype.type(0)
        for c in range(C):
            s += np.exp(row[c] - m)
        log_sum_exp = np.log(s)
        for c in range(C):
            p[c] = np.exp((row[c] - m) - log_sum_exp)
        total -= (row[y] - m) - log_sum_exp
    return total / N, -1


class MSELoss:
    r"""Mean squared error over every element.

    .. math::
        \ell = \frac{1}{M} \sum_i (p_i - t_i)^2
        \qquad
        \frac{\partial \ell}{\partial p_i} = \frac{2 (p_i - t_i)}{M}

    where :math:`M` is the number of elements.

    Shape:
        - pred: any shape, float32 or float64.
        - target: the same shape; it is cast to ``pred``'s dtype so the gradient keeps it.
        - returns: a Python ``float``; ``backward()`` returns ``pred``'s shape and dtype.
    """

    def __init__(self):
        self._diff: np.ndarray | None = None

    def __call__(self, pred: np.ndarray, target: np.ndarray) -> float:
        return self.forward(pred, target)

    def forward(self, pred: np.ndarray, target: np.ndarray) -> float:
        _check_float_array("MSELoss", "pred", pred)
        pred = np.asarray(pred)              # a plain array (a model's output is a Tensor)
        target = np.asarray(target, dtype=pred.dtype)
        if target.shape != pred.shape:
            raise ValueError(
                f"MSELoss: expected target of shape {pred.shape} like pred, "
                f"got shape {target.shape}"
            )
        if pred.size == 0:
            raise ValueError(f"MSELoss: expected a non-empty pred, got shape {pred.shape}")
        diff = pred - target                                   # same shape as pred
        self._diff = diff
        return float(np.mean(diff * diff))

    def backward(self) -> np.ndarray:
        if self._diff is None:
            raise ValueError(
                "MSELoss: backward() called before forward() (each forward serves one backward)"
            )
        diff, self._diff = self._diff, None                    # release the cache
        diff *= 2 / diff.size                                  # reuse the buffer in place
        return diff

    def __repr__(self) -> str:
        return "MSELoss()"
