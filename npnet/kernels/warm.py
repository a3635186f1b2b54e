"""Fill the caches a new process reads before its first step: ``python -m npnet.kernels.warm``.

Numba compiles a kernel at its first call, for the argument types of that call, and
with ``cache=True`` it writes the machine code to its cache (``__pycache__`` next to the
kernel's file, or ``NUMBA_CACHE_DIR``), from which every later process loads it in
milliseconds.  Compiling LeNet-5's kernels from nothing takes over ten seconds
(docs/performance.md, "Start-up"): without this, the first ``make train`` of a new clone
pays them before its first step.  The Makefile runs this module once, when it builds
``.venv``, so the first run finds the cache filled.

What it compiles is what training runs, not a list of signatures: a list would have to
repeat the exact types the layers pass (dtype, layout, read-only flags), and would go
stale, silently, when a layer changed what it passes.  So it trains one step of each
model ``examples/train_lenet.py`` builds, then evaluates it, on a small random batch in
float32 (the default dtype) with SGD: every kernel those calls reach is compiled for the
types it is really called with.  The batch, 16, is more than one chunk for every
convolution (a chunk is at most 8 samples), as in training; then one image is
evaluated, a single chunk, which runs the shifted kernels' serial twins
(``npnet/kernels/fused.py``, ``_serial``): a prediction for one image is compiled too.
``tests/kernels/test_warm.py`` checks that a new process then runs the main job's first
step and evaluation without compiling anything.

The cache stays valid as long as the kernels' files do: Numba keys each entry by its
source file's modification time and size (and the CPU), and compiles again, overwriting
the entry, when a file changes.  It cannot see a change in *another* file whose
function a kernel calls, so a cached kernel calls Numba functions of its own file only
(tests/kernels/test_warm.py checks that too).

It first writes the bytecode of npnet's Python files (``compileall``), the other thing
a new process would otherwise compile.  Python writes a module's bytecode to
``__pycache__`` at its first import, unless ``PYTHONDONTWRITEBYTECODE`` is set, as it is
on this project's machines: then every process compiled all of npnet's source again,
about 0.12 s of each start-up (docs/performance.md, "Start-up").  pip compiles the
packages it installs; npnet is installed editable (its files stay where they are), so
this does it.  Python checks each bytecode file against its source's modification time
and size, so an edited file is compiled again, never read stale.

This module sits in ``kernels`` because it is about them, but it drives the models from
above: it imports them when it runs, never when npnet is imported.
"""
from __future__ import annotations

import compileall
import sys
import time
from pathlib import Path

import numpy as np

# the builders the main job can train (examples/train_lenet.py's --model), and the seed's
# class, which the README trains: each is one training step and one evaluation here
MODELS = ("lenet5", "lenet5_classic", "LeNet5", "resnet")


def compile_bytecode() -> bool:
    """Write the bytecode of every Python file of npnet (where Python will read it:
    ``__pycache__``, or under ``PYTHONPYCACHEPREFIX``); False if a file failed."""
    return bool(compileall.compile_dir(Path(__file__).resolve().parents[1], quiet=1))


def warm(batch: int = 16, models=MODELS) -> dict:
    """Run one training step and one evaluation forward of each model in ``models`` on
    a random float32 batch of ``batch`` MNIST-sized images, then evaluate one image;
    returns {model: seconds}."""
    import npnet                                 # from above kernels: at call time only
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    seconds = {}
    for name in models:
        t0 = time.perf_counter()
        with npnet.nn.init_generator(rng):
            model = getattr(npnet.models, name)()
        crit = npnet.CrossEntropyLoss()
        opt = npnet.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        for _ in range(2):                       # the second step: momentum buffers exist
            opt.zero_grad()
            crit(model(x), y)
            model.backward(crit.backward())
            opt.step()
        model.eval()
        model(x)
        model(x[:1])                             # one chunk: the serial twins
        seconds[name] = time.perf_counter() - t0
    return seconds


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        print(f"usage: python -m npnet.kernels.warm (takes no arguments, got {argv[0]!r})",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    if not compile_bytecode():
        print("npnet.kernels.warm: could not write the bytecode of npnet's Python files "
              "(compileall printed why above)", file=sys.stderr)
        return 1
    seconds = warm()
    parts = ", ".join(f"{name} {s:.1f} s" for name, s in seconds.items())
    print(f"npnet bytecode and kernels compiled and cached in "
          f"{time.perf_counter() - t0:.1f} s ({parts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
