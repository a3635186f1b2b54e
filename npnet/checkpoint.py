"""The main job's checkpoints: what they hold, and the one place that checks them.

``examples/train_lenet.py`` writes ``last.npz`` and ``best.npz`` with :func:`npnet.save`:
a dict ``{"format": FORMAT, "model", "optimizer", "scheduler", "epoch", "rng",
"history", "best_val", "args"}``.  A checkpoint is input like any other, and a file can
come from anywhere, so everything read from one is checked as strictly as a command-line
flag, by the same rules (:data:`SETTINGS`): ``--resume`` (:func:`load_checkpoint`) and
``examples/predict.py`` (:func:`load_model`) refuse a bad field with a one-line
``ValueError`` naming the file and the field, before anything is built or written.

    ckpt = npnet.checkpoint.load_checkpoint("runs/lenet5/last.npz", resume=True)
    model, settings = npnet.checkpoint.load_model("runs/lenet5/best.npz")

:func:`load_model` also reads the weights-only safetensors file of ``--export-safetensors``
(its header names the model and the dataset).
"""
from __future__ import annotations

import math
import numbers
import os

import numpy as np

from . import io

__all__ = ["FORMAT", "MODELS", "DATASETS", "SETTINGS", "check_settings", "load_checkpoint",
           "load_model"]

FORMAT = "npnet-lenet5-train"
#: functions of npnet.models a checkpoint may name
MODELS = ("lenet5", "lenet5_classic", "resnet")
DATASETS = ("mnist", "fashion-mnist")
TRAINING_IMAGES, EVAL_IMAGES = 50_000, 10_000     # after the 50,000 / 10,000 split


def _int(low, high, optional=False):
    def check(v):
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            return f"an int from {low} to {high}"
        return None if low <= v <= high else f"an int from {low} to {high}"
    return check


def _real(test, text):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not test(float(v)):
            return text
        return None
    return check


def _choice(options):
    def check(v):
        return None if isinstance(v, str) and v in options else f"one of {', '.join(options)}"
    return check


def _bool(v):
    return None if isinstance(v, bool) else "yes or no (a bool)"


#: The settings of a run that shape its training trajectory, each with its rule: a check
#: returning None when the value is good, else what it should be.  The command line and
#: the checkpoints are held to the same rules.
SETTINGS = {
    "model": _choice(MODELS),
    "dataset": _choice(DATASETS),
    "epochs": _int(1, 10_000),
    "batch_size": _int(1, TRAINING_IMAGES),
    "lr": _real(lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    "optimizer": _choice(("sgd", "adam")),
    # momentum >= 1 lets past steps grow without bound: no trajectory converges there
    "momentum": _real(lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": _real(lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "shift": _int(0, 27),                          # a 28-pixel image moved 28 is gone
    "flip": _bool,
    "seed": _int(0, 2**64 - 1),
    "limit": _int(1, TRAINING_IMAGES, optional=True),
    "eval_limit": _int(1, EVAL_IMAGES, optional=True),
}
# Checkpoints from before --model, --flip and --eval-limit existed trained LeNet-5,
# unflipped, validated on every held-out image.
_OLD_DEFAULTS = {"model": "lenet5", "flip": False, "eval_limit": None}
_HISTORY = ("epoch", "train_loss", "train_accuracy", "val_accuracy", "lr", "seconds")


def check_settings(settings: dict, name=lambda key: f"setting {key!r}") -> None:
    """Raise ``ValueError`` naming the first setting that breaks its rule in ``SETTINGS``.

    ``name(key)`` says how the message calls a setting: ``--batch-size`` for a flag,
    ``setting 'batch_size'`` in a checkpoint.  Only the keys present are checked.
    """
    for key, value in settings.items():
        if key not in SETTINGS:
            raise ValueError(f"unknown {name(key)}")
        wanted = SETTINGS[key](value)
        if wanted is not None:
            raise ValueError(f"{name(key)} must be {wanted}, got {value!r}")


def load_checkpoint(path, *, resume: bool = False) -> dict:
    """Read a checkpoint of the main job and check every field in it.

    Args:
        path: the file (``npnet.load`` reads it: regular files only, bounded).
        resume: require everything a resumed run needs (optimizer, scheduler, epoch,
            generator, history); else a dict with ``"model"`` and, optionally, ``"args"``
            (what prediction needs) is enough.  Fields present are checked either way.

    Returns:
        The checkpoint, with ``"args"`` completed for checkpoints older than some
        settings.  Whether ``"model"`` fits its architecture is for ``load_state_dict``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a one-line message naming ``path`` and the bad field.
    """
    path = os.fspath(path)
    ckpt = io.load(path)
    where = f"{path}: "
    try:
        _check(ckpt, resume)
    except ValueError as err:
        raise ValueError(where + str(err)) from None
    return ckpt


def _check(ckpt, resume: bool) -> None:
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError("not a checkpoint written by train_lenet.py")
    if resume and ckpt.get("format") != FORMAT:
        raise ValueError("not a checkpoint written by train_lenet.py")
    _check_arrays(ckpt["model"], "model", flat=True)
    if "args" in ckpt or resume:
        args = ckpt.get("args")
        if not isinstance(args, dict):
            raise ValueError("'args' must be a dict of the run's settings")
        if resume or "format" in ckpt:
            args = ckpt["args"] = {**_OLD_DEFAULTS, **args}
            missing = [k for k in SETTINGS if k not in args]
            if missing:
                raise ValueError(f"the checkpoint lacks the settings {missing}")
        check_settings(args)
    if not resume:
        return
    for key in ("optimizer", "scheduler", "rng", "history"):
        if not isinstance(ckpt.get(key), dict):
            raise ValueError(f"{key!r} must be a dict")
    _check_arrays(ckpt["optimizer"], "optimizer", flat=False)
    epochs = ckpt["args"]["epochs"]
    epoch = ckpt.get("epoch")
    if _int(0, epochs)(epoch) is not None:
        raise ValueError(f"'epoch' must be an int from 0 to the run's {epochs} epochs, "
                         f"got {epoch!r}")
    history = ckpt["history"]
    if sorted(history) != sorted(_HISTORY):
        raise ValueError(f"'history' must have the keys {list(_HISTORY)}, got {list(history)}")
    for key, values in history.items():
        if not isinstance(values, list) or len(values) != epoch:
            raise ValueError(f"'history.{key}' must be a list of {epoch} values (one per "
                             "epoch)")
        rule = (_int(1, epochs) if key == "epoch" else
                _real(lambda v: 0 <= v <= 1, "a number in [0, 1]") if key.endswith("accuracy")
                else _real(lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"))
        bad = [v for v in values if rule(v) is not None]
        if bad:
            raise ValueError(f"'history.{key}' holds {bad[0]!r}; each value must be "
                             f"{rule(bad[0])}")
    if history["epoch"] != list(range(1, epoch + 1)):
        raise ValueError(f"'history.epoch' must count 1 to {epoch}")
    best = ckpt.get("best_val")
    # before the first epoch there is no best yet: -1, below any accuracy
    expected = max(history["val_accuracy"]) if epoch else -1.0
    if isinstance(best, bool) or best != expected:
        raise ValueError(f"'best_val' must be the best of 'history.val_accuracy' "
                         f"({expected!r}), got {best!r}")
    try:                                   # numpy checks the state as it would use it
        np.random.Generator(np.random.PCG64()).bit_generator.state = ckpt["rng"]
    except (TypeError, ValueError, KeyError, OverflowError) as err:
        raise ValueError(f"'rng' is not the state of a PCG64 generator ({err})") from None


def _check_arrays(tree, where: str, flat: bool) -> None:
    """Every array under ``tree`` is real and finite (a run never saves nan: it stops);
    ``flat``: ``tree`` is a dict of str -> array, a state_dict."""
    if flat:
        if not isinstance(tree, dict) or not all(isinstance(v, np.ndarray)
                                                 for v in tree.values()):
            raise ValueError(f"'{where}' must be a dict of arrays (a state_dict)")
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) \
        if isinstance(tree, (list, tuple)) else ()
    for key, value in items:
        name = f"{where}.{key}"
        if isinstance(value, np.ndarray):
            if not (np.issubdtype(value.dtype, np.integer) or
                    np.issubdtype(value.dtype, np.floating) or value.dtype == np.bool_):
                raise ValueError(f"'{name}' has dtype {value.dtype}, expected real numbers")
            if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                raise ValueError(f"'{name}' holds nan or inf")
        else:
            _check_arrays(value, name, flat=False)


def load_model(path):
    """A trained model, ready to predict, from a checkpoint or a safetensors file.

    Args:
        path: a checkpoint of the main job (``best.npz``, ``last.npz``), or the
            ``model.safetensors`` of ``--export-safetensors`` (a ``.safetensors`` name).

    Returns:
        ``(model, settings)``: the model in eval mode with the saved weights, and the
        settings it was trained with (at least ``"model"`` and ``"dataset"``; older
        checkpoints that lack them trained LeNet-5 on MNIST).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a one-line message naming ``path`` and what is wrong (a bad field,
            weights that do not fit the architecture, nan or inf weights).
    """
    from . import models
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        weights, settings = io.load_weights(path, with_metadata=True)
        settings = {k: v for k, v in settings.items() if k in ("model", "dataset")}
        try:
            _check_arrays(weights, "weights", flat=True)
            check_settings(settings)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    else:
        ckpt = load_checkpoint(path)
        weights, settings = ckpt["model"], dict(ckpt.get("args") or {})
    settings = {"model": "lenet5", "dataset": "mnist", **settings}
    model = getattr(models, settings["model"])()
    try:
        model.load_state_dict(weights)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return model.eval(), settings
