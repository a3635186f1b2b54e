"""Adam: per-coordinate step sizes from running moments of the gradient."""
from __future__ import annotations

import numpy as np

from .optimizer import Optimizer, check_number


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2015), exactly as ``torch.optim.Adam`` (``amsgrad=False``).

    For each parameter :math:`\theta` with gradient :math:`g`, at step :math:`t = 1, 2, \dots`:

    .. math::
        g &\leftarrow g + \lambda \theta                     && \text{if } \lambda \ne 0 \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g            && \text{(a lerp, as torch)} \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g^2 \\
        \theta &\leftarrow \theta - \frac{\gamma}{1 - \beta_1^t} \cdot
            \frac{m_t}{\sqrt{v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    with :math:`m_0 = v_0 = 0`, :math:`\gamma` = ``lr``, :math:`\lambda` = ``weight_decay``
    (L2 added to the gradient, not AdamW's decoupled decay).  As in torch, the bias
    corrections are Python floats and :math:`\epsilon` is added *after* dividing
    :math:`\sqrt{v_t}` by :math:`\sqrt{1 - \beta_2^t}`.

    Args:
        params: iterable of ``Parameter(data, grad)``, e.g. ``model.parameters()``.
        lr (float): learning rate, >= 0. Default: 1e-3.  A plain attribute the schedulers change.
        betas (tuple[float, float]): :math:`(\beta_1, \beta_2)`, each in [0, 1).
            Default: (0.9, 0.999).  Also the attributes ``beta1``, ``beta2``.
        eps (float): >= 0. Default: 1e-8.
        weight_decay (float): >= 0. Default: 0.

    State per parameter: ``step`` (int), ``exp_avg`` :math:`m` and ``exp_avg_sq`` :math:`v`
    (same shape and dtype as the parameter; zeros before the first step).

    Rounding: torch's operations in torch's order, in the parameter's dtype.  torch fuses
    multiply-adds (one rounding where NumPy rounds twice) and its vectorised float32
    ``sqrt`` is not always correctly rounded, so float32 results agree to a few ulps.
    """

    hyper_names = ("lr", "beta1", "beta2", "eps", "weight_decay")
    array_state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise ValueError(
                f"Adam: betas should be a pair (beta1, beta2), got {betas!r}"
            ) from None
        super().__init__(params, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                         weight_decay=weight_decay)

    @property
    def betas(self) -> tuple[float, float]:
        return (self.beta1, self.beta2)

    @betas.setter
    def betas(self, value: tuple[float, float]) -> None:
        self.beta1, self.beta2 = value

    @classmethod
    def _check_hyper(cls, hyper: dict) -> None:
        check_number("Adam", "learning rate lr", hyper["lr"], lambda v: v >= 0, ">= 0")
        check_number("Adam", "epsilon eps", hyper["eps"], lambda v: v >= 0, ">= 0")
        for i, key in enumerate(("beta1", "beta2")):
            check_number("Adam", f"beta parameter at index {i} ({key})", hyper[key],
                         lambda v: 0 <= v < 1, "in [0, 1)")
        check_number("Adam", "weight_decay", hyper["weight_decay"], lambda v: v >= 0, ">= 0")

    def _init_state(self, data: np.ndarray) -> dict:
        # torch creates these lazily on the first step; zeros now are the same thing
        return {"step": 0, "exp_avg": np.zeros_like(data), "exp_avg_sq": np.zeros_like(data)}

    def _update(self, data: np.ndarray, grad: np.ndarray, state: dict) -> None:
        lr, beta1, beta2 = float(self.lr), float(self.beta1), float(self.beta2)
        eps, weight_decay = float(self.eps), float(self.weight_decay)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        state["step"] += 1
        step = state["step"]

        if weight_decay != 0:
            grad = grad + weight_decay * data          # a new array: p.grad stays untouched

        # m <- lerp(m, g, 1 - beta1).  torch's lerp(a, b, w) is a + w (b - a) for |w| < 0.5
        # and b - (b - a)(1 - w) otherwise (exact at w = 1); w is rounded to the dtype first.
        weight = data.dtype.type(1 - beta1)
        if abs(weight) < 0.5:
            exp_avg += weight * (grad - exp_avg)
        else:
            exp_avg[...] = grad - (grad - exp_avg) * (1 - weight)
        # v <- beta2 v + (1 - beta2) g g    (torch: v.mul_(beta2).addcmul_(g, g, value=1-beta2))
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * grad * grad

        # the bias corrections, in Python floats as torch computes them
        bias_correction1 = 1 - beta1 ** step
        bias_correction2 = 1 - beta2 ** step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2 ** 0.5

        denom = np.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps
        # torch: param.addcdiv_(m, denom, value=-step_size), i.e. p + ((-s) * m) / denom
        data += -step_size * exp_avg / denom           # in place: data is the layer's array
