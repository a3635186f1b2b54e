"""Pictures of a training run, drawn with matplotlib (imported only when a plot is made).

Each function writes one PNG atomically (a file is complete or absent) and returns its path.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .io import atomic_write


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")          # files only: no display needed
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write(Path(path), lambda f: f.write(buf.getvalue()))
    return Path(path)


def learning_curves(history, path):
    """Training loss, and training and validation accuracy, per epoch."""
    plt = _pyplot()
    epochs = history["epoch"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(epochs, history["train_loss"], "o-", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy")
    ax1.set_yscale("log")
    ax1.grid(alpha=0.3)
    ax1.legend()
    ax2.plot(epochs, 100 * np.asarray(history["train_accuracy"]), "o-", label="train")
    ax2.plot(epochs, 100 * np.asarray(history["val_accuracy"]), "s-", label="validation")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy (%)")
    ax2.grid(alpha=0.3)
    ax2.legend()
    fig.suptitle("LeNet-5 learning curves")
    return _save(fig, path)


def confusion_matrix(y_true, y_pred, classes, path):
    """Counts of (true class, predicted class); the diagonal is what went right."""
    plt = _pyplot()
    k = len(classes)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    im = ax.imshow(np.log1p(cm), cmap="Blues")
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 3 else "black")
    ax.set_xticks(range(k), [str(c) for c in classes], rotation=45 if k and
                  isinstance(classes[0], str) else 0)
    ax.set_yticks(range(k), [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    errors = int(cm.sum() - np.trace(cm))
    ax.set_title(f"confusion matrix: {errors} errors in {int(cm.sum()):,}")
    fig.colorbar(im, ax=ax, label="log(1 + count)")
    return _save(fig, path)


def misclassified(images, y_true, y_pred, classes, path, max_images=36):
    """A grid of misclassified images, each titled 'true -> predicted'."""
    plt = _pyplot()
    wrong = np.flatnonzero(np.asarray(y_true) != np.asarray(y_pred))[:max_images]
    cols = 6
    rows = max(1, -(-len(wrong) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.5, rows * 1.7))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, i in zip(np.atleast_1d(axes).ravel(), wrong):
        ax.imshow(np.asarray(images[i]).reshape(images[i].shape[-2:]), cmap="gray_r")
        ax.set_title(f"{classes[y_true[i]]} \u2192 {classes[y_pred[i]]}", fontsize=8,
                     color="firebrick")
    fig.suptitle(f"misclassified test images (first {len(wrong)}): true \u2192 predicted")
    return _save(fig, path)
