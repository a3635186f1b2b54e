"""Stochastic gradient descent, with momentum, dampening, Nesterov and weight decay."""
from __future__ import annotations

import numpy as np
from numba import njit

from .optimizer import Optimizer, check_number


class SGD(Optimizer):
    r"""Stochastic gradient descent, exactly as ``torch.optim.SGD``.

    For each parameter :math:`\theta` with gradient :math:`g`, at step :math:`t`:

    .. math::
        g &\leftarrow g + \lambda \theta                          && \text{if } \lambda \ne 0 \\
        b_t &= g \ \text{ if } t = 1, \text{ else } \mu b_{t-1} + (1 - \tau) g
                                                                  && \text{if } \mu \ne 0 \\
        g &\leftarrow g + \mu b_t \ \text{ (Nesterov), else } b_t && \text{if } \mu \ne 0 \\
        \theta &\leftarrow \theta - \gamma g

    with :math:`\gamma` = ``lr``, :math:`\mu` = ``momentum``, :math:`\tau` = ``dampening``,
    :math:`\lambda` = ``weight_decay``.  The buffer starts as the first gradient itself
    (no dampening on that step), as in torch.

    Args:
        params: iterable of ``Parameter(data, grad)``, e.g. ``model.parameters()``.
        lr (float): learning rate, >= 0.  A plain attribute the schedulers change.
        momentum (float): >= 0. Default: 0.
        dampening (float): Default: 0.
        weight_decay (float): L2 penalty, >= 0. Default: 0.
        nesterov (bool): Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.

    State per parameter: ``momentum_buffer``, same shape and dtype as the parameter, or
    ``None`` before the first step (and always when ``momentum == 0``).

    Rounding: the operations are torch's, in torch's order and in the parameter's dtype
    (a Python float meets a float32 array in float32, as torch casts its scalars).
    torch's CPU kernels fuse each ``a + s * b`` into one multiply-add (a single rounding);
    npnet's loop (``_step``, compiled by Numba: one pass over each parameter instead of
    NumPy's five) rounds the product and the sum separately, so float32 results agree
    with torch to about an ulp per operation.
    """

    hyper_names = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    array_state_names = ("momentum_buffer",)

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov)

    @classmethod
    def _check_hyper(cls, hyper: dict) -> None:
        check_number("SGD", "learning rate lr", hyper["lr"], lambda v: v >= 0, ">= 0")
        check_number("SGD", "momentum", hyper["momentum"], lambda v: v >= 0, ">= 0")
        check_number("SGD", "dampening", hyper["dampening"], lambda v: True, "a number")
        check_number("SGD", "weight_decay", hyper["weight_decay"], lambda v: v >= 0, ">= 0")
        if not isinstance(hyper["nesterov"], (bool, np.bool_)):
            raise ValueError(f"SGD: nesterov should be a bool, got {hyper['nesterov']!r}")
        if hyper["nesterov"] and (hyper["momentum"] <= 0 or hyper["dampening"] != 0):
            raise ValueError(
                "SGD: Nesterov momentum requires momentum > 0 and dampening == 0, got "
                f"momentum={hyper['momentum']}, dampening={hyper['dampening']}"
            )

    def _init_state(self, data: np.ndarray) -> dict:
        return {"momentum_buffer": None}

    def _update(self, data: np.ndarray, grad: np.ndarray, state: dict) -> None:
        momentum = float(self.momentum)
        buf = state["momentum_buffer"]
        first = momentum != 0 and buf is None
        if first:                                      # t = 1: b = g (made by the step)
            buf = state["momentum_buffer"] = np.empty(data.shape, data.dtype)
        elif buf is not None and not buf.flags.c_contiguous:
            buf = state["momentum_buffer"] = np.ascontiguousarray(buf)   # updated in place
        view = data.flags.c_contiguous
        flat = data.reshape(-1)                        # a view (a copy if data is strided)
        _step(flat, grad.reshape(-1), flat if buf is None else buf.reshape(-1), first,
              float(self.lr), momentum, float(self.dampening), float(self.weight_decay),
              bool(self.nesterov))
        if not view:
            data[...] = flat.reshape(data.shape)       # in place: data is the layer's array


@njit(cache=True, nogil=True)
def _step(data, grad, buf, first, lr, momentum, dampening, weight_decay, nesterov):
    """The rule above for one parameter, element by element, on flat arrays.

    Every operation rounds once in the parameter's dtype (each Python float is cast to
    it first, as NumPy and torch cast their scalars), in torch's order; ``p.grad`` is only
    read.  ``buf`` is the momentum buffer (unused if momentum is 0), filled on the
    ``first`` step.
    """
    t = data.dtype.type
    lr_, mu, tau, wd = t(lr), t(momentum), t(1 - dampening), t(weight_decay)
    for i in range(data.size):
        g = grad[i]
        if weight_decay != 0:
            g = g + wd * data[i]                      # torch: g = g.add(p, alpha=wd)
        if momentum != 0:
            if first:
                b = g                                  # b_1 = g, no dampening
            elif dampening == 0:
                b = buf[i] * mu + g                    # torch: buf.mul_(mu).add_(g, alpha=1-tau)
            else:
                b = buf[i] * mu + tau * g
            buf[i] = b
            g = g + mu * b if nesterov else b
        data[i] = data[i] - lr_ * g                   # torch: p.add_(g, alpha=-lr)
