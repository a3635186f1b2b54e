"""Backpropagation through LeNet-5, one layer at a time, on one real MNIST digit.

    python examples/backprop_step_by_step.py               # pauses for Enter between layers
    python examples/backprop_step_by_step.py --no-pause    # runs straight through
    python examples/backprop_step_by_step.py --checkpoint runs/lenet5/best.npz --index 3

Part 1 runs the digit forward through every layer (conv1, act1, pool1, ..., fc2) and into
the loss, showing each layer's input and output.  Part 2 runs the gradient backward, from
the loss to conv1, showing at each layer the gradient that arrives (dL/d output), the
gradient that leaves (dL/d input) and the gradients of the weights; then it checks that
layer's backward numerically, at this very point: ``npnet.gradcheck`` runs the layer on the
input it really received, with the gradient that really arrived, and compares backward's
answer with central differences.  The network runs in float64 so that check is precise.

Everything shown is recorded by ``npnet.hooks.trace``: no layer is modified to print.
It pauses only when run from a terminal; with ``--no-pause`` it never reads stdin.
The derivations are in docs/layers/*.md.
"""
from __future__ import annotations

import argparse
import copy
import sys
import textwrap

import numpy as np

import npnet
import npnet.hooks
from npnet import data as npdata

SYMBOL = {"weight": "W", "bias": "b", "input": "x"}
REL_ERR_OK = 1e-6       # gradcheck's rel_err below this counts as agreement (float64)
ROUNDING_FLOOR = 1e-9   # ...or, for a tiny gradient, absolute differences below this
KINK = 1e-5             # inputs this close to a kink are left out of the check (see below)
FULL_CHECK_MAX = 5000   # check every element up to this many numbers, else random directions

DOCS = {"Conv2d": "docs/layers/conv.md", "ReLU": "docs/layers/activations.md",
        "MaxPool2d": "docs/layers/maxpool.md", "Flatten": "docs/layers/flatten.md",
        "Linear": "docs/layers/linear.md", "loss": "docs/layers/cross_entropy.md"}


# -- printing --------------------------------------------------------------------------------
def numbers(values) -> str:
    """A few numbers, all in one format: fixed point, or scientific when they are tiny."""
    values = np.asarray(values, dtype=np.float64).ravel() + 0.0    # + 0.0: no "-0.0000"
    big = np.abs(values).max(initial=0.0)
    fmt = "{:+.2e}" if 0 < big < 1e-3 else "{:+.4f}"
    return "[" + " ".join(fmt.format(v) for v in values) + "]"


def peek(name: str, a: np.ndarray) -> str:
    """Where to look in an array, and five values from there (from the middle of the image)."""
    if a.ndim == 4 and a.shape[2] * a.shape[3] > 1:
        h, w0 = a.shape[2] // 2, max(0, a.shape[3] // 2 - 2)
        return f"{name}[0, 0, {h}, {w0}:{w0 + 5}] = {numbers(a[0, 0, h, w0:w0 + 5])}"
    if a.ndim == 4:
        return f"{name}[0, 0:5, 0, 0] = {numbers(a[0, :5, 0, 0])}"
    return f"{name}[0, 0:5] = {numbers(a[0, :5])}"


def summary(a: np.ndarray) -> str:
    zeros = np.count_nonzero(a == 0)
    return (f"min {a.min() + 0.0:+.4g}  max {a.max() + 0.0:+.4g}"
            + (f"  zeros: {zeros:,} of {a.size:,}" if zeros else ""))


def show(label: str, a: np.ndarray, name: str) -> None:
    """Two lines about one array: its shape and range, then a few of its values."""
    print(f"  {label:<15} {str(a.shape):<17} {summary(a)}")
    print(f"  {'':<15} {peek(name, a)}")


def show_digit(image: np.ndarray) -> None:
    """The 28x28 digit as text, two characters per pixel, blank rows trimmed."""
    ramp = " .:-=+*#%@"
    rows = np.flatnonzero(image.max(axis=1) > 0)
    for row in image[max(rows[0] - 1, 0):rows[-1] + 2]:
        print("    " + "".join(ramp[min(9, int(v) * 10 // 256)] * 2 for v in row))


def say(text: str) -> None:
    """A paragraph of explanation, wrapped and indented."""
    print(textwrap.fill(text, width=92, initial_indent="  ", subsequent_indent="  "))


def heading(title: str) -> None:
    print(f"\n---- {title} " + "-" * max(0, 78 - len(title)))


class Pauser:
    """Wait for Enter between steps, only when asked to and when stdin is a terminal."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stdin is not None and sys.stdin.isatty()

    def __call__(self, what_next: str) -> None:
        if not self.enabled:
            return
        try:
            answer = input(f"\n[Enter: {what_next}   q: quit] ")
        except EOFError:
            self.enabled = False
            return
        if answer.strip().lower() == "q":
            raise SystemExit(0)


# -- what each layer does, in words ----------------------------------------------------------
def forward_words(layer) -> str:
    kind = type(layer).__name__
    if kind == "Conv2d":
        F, C, kh, kw = layer.params["weight"].shape
        return (f"{F} filters of {C}x{kh}x{kw} slide over the input (stride "
                f"{layer.stride[0]}, padding {layer.padding[0]}); each output is the "
                "weighted sum of the pixels under a filter, plus its bias")
    if kind == "ReLU":
        return "keeps the positive values and sets the negative ones to 0"
    if kind == "MaxPool2d":
        k = layer.kernel_size[0]
        return f"keeps the largest value of each {k}x{k} window: each map shrinks {k} times"
    if kind == "Flatten":
        return "lays the maps out as one vector per image (no arithmetic)"
    if kind == "Linear":
        return (f"each of the {layer.out_features} outputs is a weighted sum of all "
                f"{layer.in_features} inputs, plus a bias")
    return ""


def backward_words(layer, record) -> str:
    kind = type(layer).__name__
    if kind == "Conv2d":
        return ("dL/dW: each weight sums (gradient x the pixel it met) over every position; "
                "dL/db: the sum of the gradient; dL/dx = col2im(W^T G): each pixel collects "
                "the gradient of every window it was in")
    if kind == "ReLU":
        blocked = int(np.count_nonzero(record.input <= 0))
        return (f"dL/dx = G where the input was > 0, else 0: it blocked {blocked:,} of "
                f"{record.input.size:,} entries")
    if kind == "MaxPool2d":
        n = record.grad_out.size
        return (f"each window's gradient goes to the pixel that won it, the others get 0: "
                f"{n:,} windows, so at most {n:,} nonzero entries of {record.input.size:,}")
    if kind == "Flatten":
        return "dL/dx is G reshaped back to the maps' shape"
    if kind == "Linear":
        return "dL/dx = G W,  dL/dW = G^T x,  dL/db = G summed over the batch"
    return ""


# -- the numerical check of one layer at the point it was used -------------------------------
class OnlyAt(npnet.Layer):
    """``layer`` seen as a function of some of its inputs only (the others stay as in x0).

    Used to leave the inputs that sit on a kink out of a numerical check; the parameters
    are the layer's own, so they are still checked.
    """

    def __init__(self, layer, x0, free):
        super().__init__()
        self.layer, self.x0, self.free = layer, x0, free

    def forward(self, z):
        x = self.x0.copy()
        x[self.free] = z
        return self.layer.forward(x)

    def backward(self, grad_out):
        return self.layer.backward(grad_out)[self.free]

    def named_parameters(self):
        return self.layer.named_parameters()

    def zero_grad(self):
        self.layer.zero_grad()

    def train(self, mode=True):
        self.layer.train(mode)
        return self


class LossOfLogits(npnet.Layer):
    """The loss for fixed labels, as a layer: logits (N, C) -> loss, a 0-d array."""

    def __init__(self, labels):
        super().__init__()
        self.crit, self.labels = npnet.CrossEntropyLoss(), labels

    def forward(self, logits):
        return np.array(self.crit(logits, self.labels))

    def backward(self, grad_out):
        return self.crit.backward() * grad_out


def kinks(layer, x) -> tuple[np.ndarray, str]:
    """Input elements within KINK of a point where the layer has no derivative, and why.

    ReLU: inputs at 0.  Max-pool: every pixel of a window whose two largest values tie
    (a flat patch of background: a nudge of one pixel up moves the maximum, a nudge down
    does not, so the two one-sided derivatives differ and a central difference gives
    neither).  Other layers here are smooth.
    """
    if isinstance(layer, npnet.ReLU):
        return np.abs(x) < KINK, "they are 0, ReLU's kink"
    if isinstance(layer, npnet.MaxPool2d):
        (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
        if (kh, kw) != (sh, sw) or layer.padding != (0, 0):
            raise NotImplementedError("kinks: only non-overlapping windows, no padding")
        N, C, H, W = x.shape
        OH, OW = H // kh, W // kw
        win = x[:, :, :OH * kh, :OW * kw].reshape(N, C, OH, kh, OW, kw)
        top2 = np.sort(win.transpose(0, 1, 2, 4, 3, 5).reshape(N, C, OH, OW, kh * kw),
                       axis=-1)[..., -2:]
        tied = (top2[..., 1] - top2[..., 0]) < KINK                 # (N, C, OH, OW)
        mask = np.zeros(x.shape, dtype=bool)
        mask[:, :, :OH * kh, :OW * kw] = np.repeat(np.repeat(tied, kh, axis=2), kw, axis=3)
        return mask, (f"they are the pixels of the {int(tied.sum()):,} windows (of "
                      f"{tied.size:,}) whose maximum is a tie, e.g. flat background")
    return np.zeros(x.shape, dtype=bool), ""


def check_here(layer, x, grad_out, rng):
    """gradcheck of ``layer`` at input ``x`` with upstream gradient ``grad_out``.

    Returns (report, mode, a sentence about the inputs left out, or "").
    """
    layer = copy.deepcopy(layer)           # a copy: the model's own gradients stay as they are
    skip, why = kinks(layer, x)
    target, x_free = layer, x
    if skip.any():
        target, x_free = OnlyAt(layer, x, ~skip), x[~skip]
    size = x_free.size + sum(p.size for p in layer.params.values())
    mode = "full" if size <= FULL_CHECK_MAX else "random"
    report = npnet.gradcheck(target, x_free, grad_out=grad_out, mode=mode, n_directions=12,
                             rng=rng, raise_on_fail=False)
    left_out = ""
    if skip.any():
        left_out = (f"{int(skip.sum()):,} of {x.size:,} inputs left out of the check: {why}. "
                    "There the function has a kink and no derivative to check (see "
                    "docs/layers/maxpool.md); their gradient follows npnet's convention.")
    return report, mode, left_out


def print_check(name, report, mode, left_out="", x="x") -> tuple[bool, float]:
    how = ("every element nudged by +-1e-6" if mode == "full"
           else "along 12 random directions (too many numbers to nudge one by one)")
    print(f"  numerical check, {how}:")
    if left_out:
        print(textwrap.fill(left_out, width=92, initial_indent="    ",
                            subsequent_indent="    "))
    for r in report:
        label = f"dL/d{x if r.name == 'input' else SYMBOL.get(r.name, r.name)}"
        print(f"    {label:<6} {str(r.shape):<18} rel err {r.rel_err:.1e}  "
              f"{'ok' if r.passed else 'MISMATCH'}")
    worst = max(r.rel_err for r in report)
    largest_diff = max(r.max_abs_err for r in report)
    verdict = "FAILED"
    if all(r.passed for r in report) and worst < REL_ERR_OK:
        verdict = "ok"
    elif all(r.passed for r in report) and largest_diff < ROUNDING_FLOOR:
        verdict = "ok (at the rounding floor)"
        say(f"The gradient here is tiny (the network is confident), so its relative error "
            f"is large although the two gradients differ by at most {largest_diff:.1e}: "
            f"that is the resolution of a central difference, about 1e-16 / eps = 1e-10 "
            f"(each value of L is rounded by ~1e-16).  The check cannot tell more.")
    print(f"  check {name}: worst rel err {worst:.1e} -> {verdict}")
    return verdict, worst


# -- the walk-through ------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--no-pause", action="store_true",
                   help="run straight through (never reads stdin)")
    p.add_argument("--index", type=int, default=0, help="which MNIST test image (default 0)")
    p.add_argument("--checkpoint", default=None,
                   help="trained weights (a checkpoint of train_lenet.py); default: an "
                        "untrained network")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the untrained network's weights (default 0)")
    return p.parse_args(argv)


def build_model(args):
    model = npnet.lenet5(rng=np.random.default_rng(args.seed), dtype=np.float64)
    if args.checkpoint is None:
        return model, f"untrained (random weights, seed {args.seed})"
    ckpt = npnet.load(args.checkpoint)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise SystemExit(f"{args.checkpoint}: not a checkpoint with a 'model' entry")
    model.load_state_dict(ckpt["model"])          # float32 weights, copied into float64
    return model, f"trained weights from {args.checkpoint}"


def main(argv=None) -> int:
    args = parse_args(argv)
    pause = Pauser(not args.no_pause)
    npnet.threads.set_num_threads(1)   # one image: nothing for parallel kernels to split
    images, labels = npdata.load_mnist(split="test")
    if not 0 <= args.index < len(images):
        raise SystemExit(f"--index must be in [0, {len(images)})")
    image, label = images[args.index], int(labels[args.index])
    x = npdata.normalize(image[None], npdata.MNIST_MEAN, npdata.MNIST_STD, dtype=np.float64)
    target = np.array([label])
    model, origin = build_model(args)
    crit = npnet.CrossEntropyLoss()

    # One forward and one backward pass, recorded layer by layer.
    with npnet.hooks.trace(model) as tape:
        logits = model(x)
        loss = crit(logits, target)
        grad_logits = crit.backward()
        model.backward(grad_logits)        # need_grad_in=True: we want conv1's dL/dx too
    names = list(tape)

    print("Backpropagation, step by step: LeNet-5 on one MNIST digit")
    print("=" * 60)
    print(f"MNIST test image {args.index}, labelled {label}:\n")
    show_digit(image)
    print(f"\nThe network: npnet.lenet5 in float64, {origin}.")
    print(f"The input x: {x.shape} = (batch, channels, height, width), each pixel p "
          f"scaled to\n(p/255 - {npdata.MNIST_MEAN}) / {npdata.MNIST_STD}.")
    print("Derivations: docs/layers/*.md; the whole network: docs/lenet5.md.")
    pause("the forward pass")

    # -- part 1: forward ----------------------------------------------------------------
    print("\n\nPART 1  FORWARD: each layer turns its input into its output")
    for name in names:
        r = tape[name]
        heading(f"{name}  {r.layer!r}")
        say(forward_words(r.layer))
        show("input", r.input, "x")
        show("output", r.output, "y")
        pause("next layer")

    z = tape[names[-1]].output[0]
    p = np.exp(z - z.max())
    p /= p.sum()
    heading("loss  CrossEntropyLoss (softmax, then -log of the true class's probability)")
    print(f"  logits  z = {numbers(z)}")
    print(f"  softmax p = {numbers(p)}")
    print(f"  true class {label}: p = {p[label]:.4f}, loss = -log p = {loss:.4f}")
    print(f"  the network's guess: {int(p.argmax())} (p = {p.max():.4f})")
    pause("the backward pass")

    # -- part 2: backward, with a check at every layer -----------------------------------
    print("\n\nPART 2  BACKWARD: each layer turns the gradient of its output into the "
          "gradient of its input")
    say("G = dL/dy arrives from the layer above; the layer sends dL/dx = G times its local "
        "derivative to the layer below.  A layer with weights also ADDS dL/dW and dL/db "
        "into layer.grads (summed over the batch, and over steps until zero_grad()).")
    say("Then the check: npnet.gradcheck runs that layer alone, on the input it really got, "
        "with the gradient G that really arrived, and compares its backward with central "
        "differences (float64).")
    rng = np.random.default_rng(0)
    results = []

    heading("loss")
    onehot = np.eye(10)[label]
    say(f"The gradient leaving the loss, dL/dz (1, 10), is softmax - onehot({label}), "
        "divided by the batch size (1).  Computed here directly from p, for comparison:")
    print(f"  dL/dz      = {numbers(grad_logits[0])}")
    print(f"  p - onehot = {numbers(p - onehot)}")
    report = npnet.gradcheck(LossOfLogits(target), logits, grad_out=np.array(1.0),
                             raise_on_fail=False)
    results.append(("loss", "full", *print_check("loss", report, "full", x="z")))
    pause(f"backward through {names[-1]}")

    for name in reversed(names):
        r = tape[name]
        layer = r.layer
        heading(f"{name}  {layer!r}")
        say(f"{backward_words(layer, r)}  ({DOCS[type(layer).__name__]})")
        show("arriving dL/dy", r.grad_out, "G")
        show("leaving  dL/dx", r.grad_in, "dx")
        for pname, g in layer.grads.items():
            print(f"  {'weights  dL/d' + SYMBOL.get(pname, pname):<15} {str(g.shape):<17} "
                  f"{summary(g)}")
        report, mode, left_out = check_here(layer, r.input, r.grad_out, rng)
        results.append((name, mode, *print_check(name, report, mode, left_out)))
        if name == names[0]:
            say("(Training never needs conv1's dL/dx -- nothing before the image learns -- "
                "so it skips it; here it is computed to be checked.  It is the saliency map "
                "of examples/visualize.py: how much each pixel moves the loss.)")
        pause("next layer" if name != names[0] else "the summary")

    # -- summary ---------------------------------------------------------------------------
    print("\n\nSUMMARY  the numerical check of every layer's backward, at this digit\n")
    print(f"  {'layer':<8} {'check':<7} {'worst rel err':>13}  result")
    for name, mode, verdict, worst in results:
        print(f"  {name:<8} {mode:<7} {worst:>13.1e}  {verdict}")
    failed = [name for name, _, verdict, _ in results if verdict == "FAILED"]
    if failed:
        print(f"\n{len(failed)} check(s) failed: {', '.join(failed)}")
        return 1
    print(f"\nAll {len(results)} checks passed: every layer's backward agrees with the "
          f"numerical derivative\n(relative error below {REL_ERR_OK:g}, or differences "
          f"below the rounding floor {ROUNDING_FLOOR:g} where the gradient is tiny).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
