"""Backpropagation through LeNet-5, one layer at a time, on one real MNIST digit.

    python examples/backprop_step_by_step.py               # pauses for Enter between layers
    python examples/backprop_step_by_step.py --no-pause    # runs straight through
    python examples/backprop_step_by_step.py --checkpoint runs/lenet5/best.npz --index 3
    python examples/backprop_step_by_step.py --model seed  # the seed's torch-style class

Part 1 runs the digit forward through every layer (conv1, act1, pool1, ..., fc2) and into
the loss, showing each layer's input and output.  Part 2 runs the gradient backward, from
the loss to conv1, showing at each layer the gradient that arrives (dL/d output), the
gradient that leaves (dL/d input) and the gradients of the weights; then it checks that
layer's backward numerically, at this very point: ``npnet.gradcheck`` runs the layer on the
input it really received, with the gradient that really arrived, and compares backward's
answer with central differences.  The network runs in float64 so that check is precise.

``--model lenet5`` (the default) is ``npnet.lenet5()``, a Sequential with one layer per
step.  ``--model seed`` is ``npnet.models.LeNet5``, the seed document's torch class: its
forward calls one ``self.relu`` four times and one ``self.pool`` twice, so the walk-through
goes call by call (relu, relu#2, relu#3, relu#4: each call has its own input and its own
gradient, and each is checked on its own), and its ``x.view`` -- a recorded reshape that
hooks do not see -- is pointed out where it happens.  Both compute the same function with
the same state_dict keys, so a checkpoint of examples/train_lenet.py loads into either.

Everything shown is recorded by ``npnet.hooks.trace``: no layer is modified to print (the
``x.view`` note is read from the model's own record, ``npnet.autograd.tape_of``).
It pauses only when run from a terminal; with ``--no-pause`` it never reads stdin.
The derivations are in docs/layers/*.md.
"""
from __future__ import annotations

import argparse
import copy
import inspect
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


# -- the calls that hooks do not see ---------------------------------------------------------
def unhooked_calls(model, names) -> dict:
    """The recorded calls of the last forward that no hook saw, by where they happened.

    ``trace`` hooks the model's layers (its attributes).  ``x.view``, ``x.flatten`` and
    ``npnet.nn.functional`` make a small layer on the spot (npnet/nn/functional.py): it is
    recorded on the model's tape like any call, so its gradient flows, but it has no hook.
    The tape (``npnet.autograd.tape_of``) lists every call in order, so each unhooked call
    sits after the k-th hooked one, k = -1 meaning before the first.  Read it after the
    forward, before ``model.backward`` replays (and releases) the tape.

    Returns:
        {k: [autograd.Call, ...]}: the unhooked calls right after ``names[k]``.
    """
    hooked = {id(layer) for _, layer in npnet.hooks.named_layers(model)}
    found, k = {}, -1
    for c in npnet.autograd.tape_of(model).calls:
        if id(c.module) in hooked:
            k += 1                              # the call recorded as names[k]
        else:
            found.setdefault(k, []).append(c)
    if k != len(names) - 1:            # every traced call should be on the tape once
        raise RuntimeError(f"unhooked_calls: the tape holds {k + 1} hooked calls, the "
                           f"trace {len(names)}")
    return found


def unhooked_words(c, backward: bool) -> str:
    """One line about an unhooked call: what it was, and the shapes it maps between."""
    m = c.module
    if isinstance(m, npnet.nn.functional.Reshape):     # x.view(1, -1): the seed's flatten
        what = f"x.{'view' if m.view_only else 'reshape'}{m.shape}"
    else:
        what = f"a {type(m).__name__} call"
    x_shape = next((s.shape for s in c.sources if s is not None), "?")   # its (first) input
    y_shape = c.shape
    if not backward:
        return f"\n  ({what}, a recorded call that hooks do not see: {x_shape} -> {y_shape})"
    back = "reshaped back to" if isinstance(m, npnet.nn.functional.Reshape) else "->"
    return f"\n  ({what}'s backward, not hooked: gradient {y_shape} {back} {x_shape})"


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
    p.add_argument("--model", choices=["lenet5", "seed"], default="lenet5",
                   help="lenet5: npnet.lenet5(), a Sequential (default); seed: "
                        "npnet.models.LeNet5, the seed's torch-style class")
    return p.parse_args(argv)


def build_model(args):
    rng = np.random.default_rng(args.seed)
    if args.model == "lenet5":
        model = npnet.lenet5(rng=rng, dtype=np.float64)
    else:
        with npnet.nn.init_generator(rng):    # the seed's class takes no rng: it draws here
            model = npnet.models.LeNet5()     # in float32, as torch's class does
        model.to(np.float64)
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

    # One forward and one backward pass, recorded call by call.
    with npnet.hooks.trace(model) as tape:
        logits = model(x)
        names = list(tape)                 # the layer calls, in forward order
        between = unhooked_calls(model, names)
        loss = crit(logits, target)
        grad_logits = crit.backward()
        model.backward(grad_logits)        # need_grad_in=True: we want conv1's dL/dx too
    # the calls of each call's layer: ['relu', 'relu#2', 'relu#3', 'relu#4'] for each call
    # of the seed's self.relu; just [name] for a layer called once
    same_layer = {name: [n for n in names if tape[n].layer is tape[name].layer]
                  for name in names}
    reused = [calls for name, calls in same_layer.items()         # each such layer once
              if len(calls) > 1 and calls[0] == name]
    step = "call" if reused else "layer"      # what one check is about

    def which_call(name):
        calls = same_layer[name]
        if len(calls) > 1:
            print(f"  call {calls.index(name) + 1} of {len(calls)} of this one "
                  f"{type(tape[name].layer).__name__} ({', '.join(calls)})")

    print("Backpropagation, step by step: LeNet-5 on one MNIST digit")
    print("=" * 60)
    print(f"MNIST test image {args.index}, labelled {label}:\n")
    show_digit(image)
    if args.model == "lenet5":
        print(f"\nThe network: npnet.lenet5 in float64, {origin}.")
    else:
        print(f"\nThe network: npnet.models.LeNet5, the seed's torch class, in float64,\n"
              f"{origin}.  Its forward, as written:\n")
        print(textwrap.indent(textwrap.dedent(inspect.getsource(type(model).forward)),
                              "    "))
        say("A layer called twice is one layer object (one set of weights) but two calls: "
            "each call is recorded on its own, with its input and saved state, and gets its "
            "own gradient.  npnet.hooks.trace names the calls "
            + "; ".join(", ".join(calls) for calls in reused) + ".")
        print()
    print(f"The input x: {x.shape} = (batch, channels, height, width), each pixel p "
          f"scaled to\n(p/255 - {npdata.MNIST_MEAN}) / {npdata.MNIST_STD}.")
    print("Derivations: docs/layers/*.md; the whole network: docs/lenet5.md.")
    pause("the forward pass")

    # -- part 1: forward ----------------------------------------------------------------
    print("\n\nPART 1  FORWARD: each layer turns its input into its output")
    for i, name in enumerate(names):
        for c in between.get(i - 1, []):
            print(unhooked_words(c, backward=False))
        r = tape[name]
        heading(f"{name}  {r.layer!r}")
        which_call(name)
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
    if reused:
        say("A layer called several times is checked once per call, each time on the input "
            "that call received and with the gradient that arrived at that call.")
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

    for i, name in reversed(list(enumerate(names))):
        r = tape[name]
        layer = r.layer
        heading(f"{name}  {layer!r}")
        which_call(name)
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
        for c in reversed(between.get(i - 1, [])):
            print(unhooked_words(c, backward=True))
        pause("next layer" if name != names[0] else "the summary")

    # -- summary ---------------------------------------------------------------------------
    print(f"\n\nSUMMARY  the numerical check of every {step}'s backward, at this digit\n")
    print(f"  {step:<8} {'check':<7} {'worst rel err':>13}  result")
    for name, mode, verdict, worst in results:
        print(f"  {name:<8} {mode:<7} {worst:>13.1e}  {verdict}")
    failed = [name for name, _, verdict, _ in results if verdict == "FAILED"]
    if failed:
        print(f"\n{len(failed)} check(s) failed: {', '.join(failed)}")
        return 1
    print(f"\nAll {len(results)} checks passed: every {step}'s backward agrees with the "
          f"numerical derivative\n(relative error below {REL_ERR_OK:g}, or differences "
          f"below the rounding floor {ROUNDING_FLOOR:g} where the gradient is tiny).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
