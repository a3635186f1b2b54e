"""Learning-rate schedulers: change ``optimizer.lr`` once per epoch, as torch's do.

    sched = StepLR(opt, step_size=30, gamma=0.1)   # leaves opt.lr as it is (epoch 0)
    for epoch in range(epochs):
        train_one_epoch(opt)                       # opt.step() many times
        sched.step()                               # epoch + 1: sets opt.lr for the next one

Like torch's, the schedulers are *chainable*: each ``step()`` computes the new rate from
the optimizer's current ``lr`` (not only from the initial one), so a change made to
``opt.lr`` by hand or by another scheduler carries on.
"""
from __future__ import annotations

import math
import numbers

from .optimizer import Optimizer, _plain, check_state_dict


class LRScheduler:
    """Base class: subclasses implement ``_next_lr()`` and set ``hyper_names``.

    Attributes:
        optimizer: the optimizer whose ``lr`` is changed.
        base_lr (float): ``optimizer.lr`` when the scheduler was made (torch's ``base_lrs[0]``).
        last_epoch (int): epochs stepped so far; 0 after construction.
    """

    hyper_names: tuple[str, ...] = ()

    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"{type(self).__name__}: {type(optimizer).__name__} is not an npnet Optimizer"
            )
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.last_epoch = 0
        self._last_lr = self.base_lr

    def _next_lr(self) -> float:
        """The rate for epoch ``self.last_epoch`` (already advanced), from ``optimizer.lr``."""
        raise NotImplementedError(f"{type(self).__name__}._next_lr")

    def step(self) -> None:
        """Advance one epoch and set ``optimizer.lr`` for it."""
        self.last_epoch += 1
        self.optimizer.lr = self._last_lr = self._next_lr()

    def get_last_lr(self) -> list[float]:
        """The rate last set, as a one-element list (torch returns one per param group)."""
        return [self._last_lr]

    def state_dict(self) -> dict:
        """Everything but the optimizer: str keys, plain int/float leaves."""
        d = {"type": type(self).__name__, "last_epoch": self.last_epoch,
             "base_lr": self.base_lr, "last_lr": self._last_lr}
        d.update({k: getattr(self, k) for k in self.hyper_names})
        return d

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a ``state_dict()``.  Like torch's, it does not change ``optimizer.lr``:
        that comes back with the optimizer's own ``load_state_dict``."""
        keys = ("last_epoch", "base_lr", "last_lr", *self.hyper_names)
        name = check_state_dict(self, state_dict, keys)
        values = {k: _plain(state_dict[k]) for k in keys}
        for k, v in values.items():
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise ValueError(f"{name}: '{k}' should be a number, got {v!r}")
        try:
            self._check_hyper(values)
        except ValueError as err:
            # drop the inner "Adam: " prefix: the message already names the class
            message = str(err).removeprefix(type(self).__name__ + ": ")
            raise ValueError(f"{name}: {message}") from None
        self.last_epoch = int(values["last_epoch"])
        self.base_lr = float(values["base_lr"])
        self._last_lr = float(values["last_lr"])
        for k in self.hyper_names:
            setattr(self, k, values[k])

    @classmethod
    def _check_hyper(cls, hyper: dict) -> None:
        pass

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.hyper_names)
        return f"{type(self).__name__}({args}, last_epoch={self.last_epoch})"


def _check_positive_int(scheduler: str, key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{scheduler}: {key} should be a positive integer, got {value!r}")


class StepLR(LRScheduler):
    r"""Multiply the learning rate by ``gamma`` every ``step_size`` epochs.

    .. math::
        \eta_e = \eta_{e-1} \cdot \gamma \ \text{ if } e \bmod s = 0, \text{ else } \eta_{e-1}
        \qquad (= \eta_0 \, \gamma^{\lfloor e / s \rfloor} \text{ when nothing else changes lr})

    Args:
        optimizer: the npnet optimizer.
        step_size (int): the period :math:`s`, in epochs (calls to ``step()``), > 0.
        gamma (float): the factor. Default: 0.1.
    """

    hyper_names = ("step_size", "gamma")

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        self._check_hyper({"step_size": step_size, "gamma": gamma})
        self.step_size, self.gamma = int(step_size), float(gamma)
        super().__init__(optimizer)

    @classmethod
    def _check_hyper(cls, hyper: dict) -> None:
        _check_positive_int("StepLR", "step_size", hyper["step_size"])
        if isinstance(hyper["gamma"], bool) or not isinstance(hyper["gamma"], numbers.Real):
            raise ValueError(f"StepLR: gamma should be a number, got {hyper['gamma']!r}")

    def _next_lr(self) -> float:
        lr = self.optimizer.lr
        if self.last_epoch % self.step_size != 0:
            return lr
        return lr * self.gamma


class CosineAnnealingLR(LRScheduler):
    r"""Anneal the learning rate along a cosine from its initial value to ``eta_min``.

    The target is (SGDR, Loshchilov & Hutter, without restarts)

    .. math::
        \eta_e = \eta_{min} + \tfrac12 (\eta_0 - \eta_{min})
                 \left(1 + \cos\left(\pi \, e / T_{max}\right)\right)

    reached at :math:`e = T_{max}`; past it the rate climbs back along the same cosine
    (period :math:`2 T_{max}`).  Like torch, each ``step()`` uses the recursive form

    .. math::
        \eta_e = \eta_{min} + (\eta_{e-1} - \eta_{min})
                 \frac{1 + \cos(\pi e / T_{max})}{1 + \cos(\pi (e - 1) / T_{max})}

    except where that ratio is 0/0 (:math:`e - 1 - T_{max}` a multiple of
    :math:`2 T_{max}`, the bottom of the cosine), where it adds
    :math:`(\eta_0 - \eta_{min})(1 - \cos(\pi / T_{max}))/2`.  The same floating-point
    operations as torch give bit-identical rates.

    Args:
        optimizer: the npnet optimizer; its ``lr`` now is :math:`\eta_0`.
        T_max (int): half-period in epochs, > 0.
        eta_min (float): the lowest rate. Default: 0.
    """

    hyper_names = ("T_max", "eta_min")

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0):
        self._check_hyper({"T_max": T_max, "eta_min": eta_min})
        self.T_max, self.eta_min = int(T_max), float(eta_min)
        super().__init__(optimizer)

    @classmethod
    def _check_hyper(cls, hyper: dict) -> None:
        _check_positive_int("CosineAnnealingLR", "T_max", hyper["T_max"])
        if isinstance(hyper["eta_min"], bool) or not isinstance(hyper["eta_min"], numbers.Real):
            raise ValueError(
                f"CosineAnnealingLR: eta_min should be a number, got {hyper['eta_min']!r}"
            )

    def _next_lr(self) -> float:
        e, t_max, eta_min = self.last_epoch, self.T_max, self.eta_min
        lr = self.optimizer.lr
        if (e - 1 - t_max) % (2 * t_max) == 0:
            # the previous epoch sat at the bottom (cos = -1): the ratio below would be 0/0
            return lr + (self.base_lr - eta_min) * (1 - math.cos(math.pi / t_max)) / 2
        return (
            (1 + math.cos(math.pi * e / t_max))
            / (1 + math.cos(math.pi * (e - 1) / t_max))
            * (lr - eta_min)
            + eta_min
        )
