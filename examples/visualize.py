"""Pictures of what LeNet-5 computes: its first filters, its feature maps, a saliency map.

    python examples/visualize.py --checkpoint runs/lenet5/best.npz --out runs/lenet5/
    python examples/visualize.py --out runs/untrained/      # no checkpoint: untrained weights
    python examples/visualize.py --model seed --out runs/seed/   # the seed's torch-style class

Writes, for one test digit (``--index``, default the first):

    conv1_filters.png        the 6 filters of conv1, 5x5 each (red positive, blue negative)
    feature_maps_conv1.png   the digit and the 6 maps of ReLU(conv1), 28x28
    feature_maps_conv2.png   the 16 maps of ReLU(conv2), 10x10
    feature_maps_conv3.png   the 120 values of ReLU(conv3), 1x1 each, laid out as a grid
    saliency.png             d(score of the true class) / d(pixel): which pixels, nudged,
                             would change the network's vote for the right answer most

The saliency map is computed by the model's own backward pass: forward the digit, send
back a gradient of 1 on the true class's score (and 0 on the others), and read the
gradient that comes out of conv1 (``model.backward``'s return value).  Feature maps are
recorded with ``npnet.hooks.trace``.  Every PNG is written atomically.

``--model lenet5`` (the default) is ``npnet.lenet5()``, a Sequential whose ReLUs are the
layers act1..act4; ``--model seed`` is ``npnet.models.LeNet5``, the seed document's torch
class, which calls one ``self.relu`` four times: the trace names those calls relu, relu#2,
relu#3, relu#4, and the feature maps are the outputs of the first three.  Both have the
same state_dict keys, so a checkpoint of examples/train_lenet.py loads into either.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

import npnet
import npnet.hooks
import npnet.io
from npnet import data as npdata

# The traced call whose output is ReLU(conv1), ReLU(conv2), ReLU(conv3), for each --model:
# lenet5() has a ReLU layer per step; the seed's class calls one self.relu again and again,
# and npnet.hooks.trace names its k-th call 'relu#k'.
FEATURE_MAPS = {"lenet5": ("act1", "act2", "act3"), "seed": ("relu", "relu#2", "relu#3")}


def pyplot():
    import matplotlib
    matplotlib.use("Agg")                 # files only, no display
    import matplotlib.pyplot as plt
    return plt


def save(fig, path: Path) -> Path:
    """Render to memory, then write the file atomically (complete or absent)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    npnet.io.atomic_write(str(path), lambda f: f.write(buf.getvalue()))
    return path


def symmetric(a: np.ndarray) -> dict:
    """imshow arguments for a diverging map centred on 0 (red +, blue -)."""
    m = float(np.abs(a).max()) or 1.0
    return dict(cmap="RdBu_r", vmin=-m, vmax=m)


def grid(n: int, cols: int):
    return -(-n // cols), cols


# -- the pictures ----------------------------------------------------------------------------
def draw_filters(weight: np.ndarray, title: str, path: Path) -> Path:
    plt = pyplot()
    F = weight.shape[0]
    fig, axes = plt.subplots(1, F, figsize=(1.6 * F, 2.2))
    kw = symmetric(weight)
    for f, ax in enumerate(np.atleast_1d(axes)):
        im = ax.imshow(weight[f, 0], **kw)
        ax.set_title(f"filter {f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(np.atleast_1d(axes)), shrink=0.8, label="weight")
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


def draw_maps(image, maps: np.ndarray, cols: int, title: str, path: Path) -> Path:
    """The input digit, then each channel of ``maps`` (C, H, W) in a grid."""
    plt = pyplot()
    C = maps.shape[0]
    rows, cols = grid(C, cols)
    fig, axes = plt.subplots(rows, cols + 1, figsize=(1.5 * (cols + 1), 1.6 * rows + 0.6),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    axes[0, 0].imshow(image, cmap="gray")
    axes[0, 0].set_title("input", fontsize=9)
    vmax = float(maps.max()) or 1.0            # one scale for all maps: comparable
    for c in range(C):
        ax = axes[c // cols, 1 + c % cols]
        im = ax.imshow(maps[c], cmap="viridis", vmin=0, vmax=vmax)
        ax.set_title(f"channel {c}", fontsize=8)
    fig.colorbar(im, ax=axes[:, 1:].ravel().tolist(), shrink=0.8, label="activation")
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


def draw_vector(image, values: np.ndarray, title: str, path: Path) -> Path:
    """120 values of size 1x1, laid out as a 10 x 12 grid, and the input beside them."""
    plt = pyplot()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(8, 3.4),
                                   gridspec_kw={"width_ratios": [1, 2.2]})
    ax0.imshow(image, cmap="gray")
    ax0.set_title("input", fontsize=9)
    ax0.axis("off")
    im = ax1.imshow(values.reshape(10, 12), cmap="viridis", vmin=0)
    ax1.set_xticks(range(12))
    ax1.set_yticks(range(10), [f"{12 * r}" for r in range(10)])
    ax1.tick_params(labelsize=7)
    ax1.set_xlabel("channel = row label + column")
    fig.colorbar(im, ax=ax1, shrink=0.9, label="activation")
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


def draw_saliency(image, grad: np.ndarray, title: str, path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("input", fontsize=9)
    im = axes[1].imshow(grad, **symmetric(grad))
    axes[1].set_title("d score / d pixel\n(red: brighter raises the score)", fontsize=9)
    fig.colorbar(im, ax=axes[1], shrink=0.8)
    axes[2].imshow(image, cmap="gray")
    axes[2].imshow(np.abs(grad), cmap="hot", alpha=0.6)
    axes[2].set_title("|d score / d pixel| over the digit", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


# -- the program -----------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None,
                   help="a checkpoint of train_lenet.py (default: an untrained network)")
    p.add_argument("--out", default=None,
                   help="directory for the PNGs (default: the checkpoint's directory, or "
                        "runs/untrained)")
    p.add_argument("--index", type=int, default=0, help="which test image (default 0)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the untrained network's weights (default 0)")
    p.add_argument("--model", choices=sorted(FEATURE_MAPS), default="lenet5",
                   help="lenet5: npnet.lenet5(), a Sequential (default); seed: "
                        "npnet.models.LeNet5, the seed's torch-style class")
    return p.parse_args(argv)


def build_model(name: str, rng: np.random.Generator):
    if name == "lenet5":
        return npnet.lenet5(rng=rng)
    with npnet.nn.init_generator(rng):        # the seed's class takes no rng: it draws here
        return npnet.models.LeNet5()


def main(argv=None) -> int:
    args = parse_args(argv)
    model = build_model(args.model, np.random.default_rng(args.seed))
    seed_class = "the seed's class npnet.models.LeNet5"
    dataset = "mnist"
    if args.checkpoint is None:
        origin = f"untrained (random weights, seed {args.seed})"
        print(f"No checkpoint given: using an untrained LeNet-5 (random weights, seed "
              f"{args.seed}){'' if args.model == 'lenet5' else ', ' + seed_class}.  "
              "The pictures show where training starts from; pass "
              "--checkpoint runs/lenet5/best.npz for a trained network.")
        out = Path(args.out or "runs/untrained")
    else:
        try:
            ckpt = npnet.load(args.checkpoint)
            if not isinstance(ckpt, dict) or "model" not in ckpt:
                raise ValueError(f"{args.checkpoint}: not a checkpoint with a 'model' entry")
            model.load_state_dict(ckpt["model"])
        except (ValueError, OSError) as e:
            raise SystemExit(f"error: {e}") from None
        dataset = (ckpt.get("args") or {}).get("dataset") or "mnist"
        origin = f"trained ({Path(args.checkpoint).name})"
        print(f"Loaded {args.checkpoint} ({dataset})"
              f"{'' if args.model == 'lenet5' else ' into ' + seed_class}.")
        out = Path(args.out) if args.out else Path(args.checkpoint).parent
    if dataset not in npdata.NORMALIZATION:
        raise SystemExit(f"{args.checkpoint}: unknown dataset {dataset!r}")
    out.mkdir(parents=True, exist_ok=True)

    load = npdata.load_mnist if dataset == "mnist" else npdata.load_fashion_mnist
    images, labels = load(split="test")
    if not 0 <= args.index < len(images):
        raise SystemExit(f"--index must be in [0, {len(images)})")
    image, label = images[args.index], int(labels[args.index])
    x = npdata.normalize(image[None], *npdata.NORMALIZATION[dataset])  # (1, 1, 28, 28)

    # Forward with a trace (for the feature maps), then backward from the true class's
    # score: grad_out is 1 on that score and 0 on the others, so what comes out of conv1 is
    # d(score)/d(input).  The model stays in training mode: eval mode keeps no caches.
    with npnet.hooks.trace(model) as tape:
        scores = model(x)                                               # (1, 10)
    grad_out = np.zeros_like(scores)
    grad_out[0, label] = 1.0
    saliency = model.backward(grad_out)[0, 0]                           # (28, 28)
    z = scores[0].astype(np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    guess = int(p.argmax())
    digit = f"test image {args.index}, label {label}"
    print(f"{digit}: the network says {guess} (p = {p[guess]:.3f}); p({label}) = "
          f"{p[label]:.3f}")
    relu1, relu2, relu3 = FEATURE_MAPS[args.model]
    relu_calls = [name for name in tape if tape[name].layer is tape[relu1].layer]
    if len(relu_calls) > 1:
        print(f"One ReLU, called {len(relu_calls)} times ({', '.join(relu_calls)}): the "
              f"feature maps are the outputs of {relu1}, {relu2} and {relu3}.")

    written = [
        draw_filters(model.conv1.weight, f"conv1's 6 filters, {origin}",
                     out / "conv1_filters.png"),
        draw_maps(image, tape[relu1].output[0], 6,
                  f"ReLU(conv1): 6 maps of 28x28, {digit}, {origin}",
                  out / "feature_maps_conv1.png"),
        draw_maps(image, tape[relu2].output[0], 8,
                  f"ReLU(conv2): 16 maps of 10x10, {digit}, {origin}",
                  out / "feature_maps_conv2.png"),
        draw_vector(image, tape[relu3].output[0, :, 0, 0],
                    f"ReLU(conv3): 120 maps of 1x1, {digit}, {origin}",
                    out / "feature_maps_conv3.png"),
        draw_saliency(image, saliency,
                      f"saliency of class {label}: the network says {guess} "
                      f"(p = {p[guess]:.2f}), {origin}", out / "saliency.png"),
    ]
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
