"""The base class of npnet's optimizers: parameters, ``zero_grad`` and ``state_dict``.

An optimizer holds the model's live ``Parameter(data, grad)`` pairs and, per parameter, a
small dict of state (a momentum buffer, Adam's moments).  ``step()`` reads every ``grad``
and updates every ``data`` **in place**: the arrays belong to the layers, so rebinding them
would silently detach the optimizer from the model.

npnet has a single parameter group: the hyperparameters are plain attributes (``opt.lr``,
``opt.momentum``, ...) that apply to every parameter.  The learning-rate schedulers change
``opt.lr`` between steps, and the next ``step()`` uses the new value.

``state_dict()`` is a nested dict with ``str`` keys whose leaves are NumPy arrays or plain
``int``/``float``/``bool``/``str``/``None``, so ``npnet.save`` writes it without pickle::

    {"type": "SGD", "lr": 0.1, "momentum": 0.9, ...,
     "state": {"0": {"momentum_buffer": array}, "1": {...}}}     # one entry per parameter
"""
from __future__ import annotations

import numbers

import numpy as np

from ..layers.base import Parameter


class Optimizer:
    """Base class: subclasses set ``hyper_names``, and implement ``_init_state``,
    ``_check_hyper`` and ``_update``.

    Args:
        params: an iterable of ``Parameter(data, grad)`` (e.g. ``model.parameters()``), or
            of ``(data, grad)`` pairs; ``data`` a float NumPy array, ``grad`` the same shape.
    """

    #: the hyperparameters, saved by ``state_dict`` (plain floats / bools)
    hyper_names: tuple[str, ...] = ()
    #: the per-parameter state entries that may be arrays of the parameter's shape
    array_state_names: tuple[str, ...] = ()

    def __init__(self, params, **hyper):
        name = type(self).__name__
        self.params: list[Parameter] = []
        for i, p in enumerate(params):
            try:
                data, grad = p
            except (TypeError, ValueError):
                raise ValueError(
                    f"{name}: parameter {i} should be a Parameter(data, grad), "
                    f"got {type(p).__name__}"
                ) from None
            if not isinstance(data, np.ndarray) or data.dtype.kind != "f":
                got = f"dtype {data.dtype}" if isinstance(data, np.ndarray) else type(data).__name__
                raise ValueError(f"{name}: parameter {i} should be a float NumPy array, got {got}")
            if not isinstance(grad, np.ndarray) or grad.shape != data.shape:
                got = f"shape {grad.shape}" if isinstance(grad, np.ndarray) else type(grad).__name__
                raise ValueError(
                    f"{name}: the grad of parameter {i} should have shape {data.shape}, got {got}"
                )
            self.params.append(Parameter(data, grad))
        if not self.params:
            raise ValueError(f"{name}: got an empty parameter list")
        self._check_hyper(hyper)
        for key in self.hyper_names:
            setattr(self, key, hyper[key])
        self.state: list[dict] = [self._init_state(p.data) for p in self.params]

    # -- what subclasses provide -------------------------------------------------------------
    def _init_state(self, data: np.ndarray) -> dict:
        return {}

    @classmethod
    def _check_hyper(cls, hyper: dict) -> None:
        """Raise ValueError for a hyperparameter torch would refuse."""

    def _update(self, data: np.ndarray, grad: np.ndarray, state: dict) -> None:
        raise NotImplementedError(f"{type(self).__name__}._update")

    # -- the public API ----------------------------------------------------------------------
    def step(self) -> None:
        """Update every parameter in place from its gradient."""
        for p, state in zip(self.params, self.state):
            self._update(p.data, p.grad, state)

    def zero_grad(self) -> None:
        """Fill every gradient with 0, in place (the layers accumulate into them)."""
        for p in self.params:
            p.grad.fill(0)

    def _hyper(self) -> dict:
        return {key: getattr(self, key) for key in self.hyper_names}

    def state_dict(self) -> dict:
        """A snapshot: hyperparameters and per-parameter state, arrays copied."""
        d = {"type": type(self).__name__}
        d.update(self._hyper())
        d["state"] = {
            str(i): {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in s.items()}
            for i, s in enumerate(self.state)
        }
        return d

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a ``state_dict()``; everything is checked before anything changes.

        The arrays are copied (and cast to each parameter's dtype), so the dict and the
        optimizer share no memory.  Raises ValueError, leaving the optimizer untouched, on a
        different optimizer type, a missing or invalid hyperparameter, a different number
        of parameters, or a state array whose shape is not its parameter's.
        """
        name = check_state_dict(self, state_dict, (*self.hyper_names, "state"))
        hyper = {k: _plain(state_dict[k]) for k in self.hyper_names}
        try:
            self._check_hyper(hyper)
        except ValueError as err:
            # drop the inner "Adam: " prefix: the message already names the optimizer
            message = str(err).removeprefix(type(self).__name__ + ": ")
            raise ValueError(f"{name}: {message}") from None

        saved = state_dict["state"]
        expected_keys = {str(i) for i in range(len(self.params))}
        if not isinstance(saved, dict) or set(saved) != expected_keys:
            got = len(saved) if isinstance(saved, dict) else type(saved).__name__
            raise ValueError(
                f"{name}: the state holds {got} parameters, this optimizer has {len(self.params)}"
            )
        new_state = []
        for i, p in enumerate(self.params):
            entry = saved[str(i)]
            template = self._init_state(p.data)
            if not isinstance(entry, dict) or set(entry) != set(template):
                got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
                raise ValueError(
                    f"{name}: parameter {i} state should have keys {sorted(template)}, got {got}"
                )
            loaded = {}
            for key, value in entry.items():
                if key in self.array_state_names and value is not None:
                    value = np.asarray(value)
                    if value.shape != p.data.shape:
                        raise ValueError(
                            f"{name}: parameter {i} '{key}' has shape {value.shape}, "
                            f"the parameter has shape {p.data.shape}"
                        )
                    # a fresh array in the parameter's dtype, as torch casts loaded state
                    value = np.array(value, dtype=p.data.dtype, copy=True)
                elif key not in self.array_state_names:
                    value = _plain(value)
                    if not isinstance(value, type(template[key])):
                        raise ValueError(
                            f"{name}: parameter {i} '{key}' should be "
                            f"{type(template[key]).__name__}, got {value!r}"
                        )
                elif template[key] is not None:  # an array entry that may not be None
                    raise ValueError(f"{name}: parameter {i} '{key}' is None")
                loaded[key] = value
            new_state.append(loaded)

        for key, value in hyper.items():
            setattr(self, key, value)
        self.state = new_state

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._hyper().items())
        return f"{type(self).__name__}({len(self.params)} parameters, {args})"


def check_state_dict(owner, state_dict, keys) -> str:
    """Refuse a state_dict that is not a dict, is another class's, or lacks one of ``keys``.

    Shared by the optimizers and the schedulers; returns the name to prefix errors with.
    """
    name = f"{type(owner).__name__}.load_state_dict"
    if not isinstance(state_dict, dict):
        raise ValueError(f"{name}: expected a dict, got {type(state_dict).__name__}")
    kind = state_dict.get("type", type(owner).__name__)
    if kind != type(owner).__name__:
        raise ValueError(f"{name}: the state is of a {kind}, not a {type(owner).__name__}")
    missing = [k for k in keys if k not in state_dict]
    if missing:
        raise ValueError(f"{name}: missing keys {missing}")
    return name


def _plain(value):
    """NumPy scalars and 0-d arrays (as a file reader may return them) -> int/float/bool."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def check_number(optimizer: str, what: str, value, ok, expected: str) -> None:
    """ValueError unless ``value`` is a real number with ``ok(value)`` true."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not ok(value):
        raise ValueError(f"{optimizer}: invalid {what}: {value!r} (expected {expected})")
