"""Forward and backward time of each call of a training step, in milliseconds.

    .venv/bin/python benchmarks/profile_layers.py [--batch 64] [--repeats 200]
                                                  [--model lenet5|seed|resnet] [--no-fuse]

The models: ``lenet5`` (npnet.lenet5()), ``seed`` (the seed's class, npnet.models.LeNet5),
``resnet`` (npnet.models.resnet()).

One training forward is recorded; then each recorded call (as the tape lists it: a fused
conv -> ReLU -> pool block is one call) is timed on its own, its layer's forward and
backward run on arrays of the shapes that call saw, as often as ``--repeats`` says.  The
loss, the optimizer step and the whole step (the README's loop) are timed too, and the
same calls made by hand (each layer's forward and backward called directly, in the tape's
order): the whole step minus that is what recording and replaying costs.  A part timed
alone finds the caches warm, so the parts add up to less than either step.  Each figure is
a median (the machine is shared).

The roofline columns: each call's floating-point work (``roofline.step_flops``, from the
layers' shapes: 2 FLOP per multiply-add of its matrix products; 0 for ReLU, pool and
reshape), the GFLOP/s its time gives, and that as a fraction of the sgemm peak measured
at the start on the same threads (``roofline.sgemm_gflops``).
"""
from __future__ import annotations

import argparse
import time

import os
import sys

import numpy as np

import npnet

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import roofline  # noqa: E402  (benchmarks/roofline.py: FLOP counts and the sgemm peak)


def median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times[repeats // 10:]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--model", choices=["lenet5", "seed", "resnet"], default="lenet5")
    ap.add_argument("--no-fuse", action="store_true")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    with npnet.nn.init_generator(rng):
        model = {"lenet5": npnet.lenet5, "seed": npnet.models.LeNet5,
                 "resnet": npnet.models.resnet}[args.model]()
    npnet.fusion.set_fusion(model, not args.no_fuse)
    x = rng.standard_normal((args.batch, 1, 28, 28)).astype(np.float32)
    t = rng.integers(0, 10, args.batch)
    crit = npnet.CrossEntropyLoss()
    opt = npnet.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad()
        crit(model(x), t)
        model.backward(crit.backward())
        opt.step()

    peak = roofline.sgemm_gflops(npnet.threads.get_num_threads())
    for _ in range(10):
        step()
    flop = {name: (f * args.batch, b * args.batch)           # per call, the whole batch
            for name, _, f, b in roofline.step_flops(model, x)}
    model(x)
    tape = npnet.autograd.tape_of(model)
    print(tape)
    rows, total = [], 0.0
    for c, name in zip(tape.calls, tape.call_names()):
        ins = [rng.standard_normal(s.shape).astype(np.float32) if s is not None else x
               for s in c.sources]
        layer = c.module
        y = layer(*ins)
        g = rng.standard_normal(y.shape).astype(np.float32)
        skip = c.index == 0 and layer.can_skip_grad_in     # dL/d(images) is never read

        def fb(layer=layer, ins=ins, g=g, skip=skip):
            layer(*ins)
            return layer.backward(g, need_grad_in=False) if skip else layer.backward(g)
        fwd = median_ms(lambda: layer(*ins), args.repeats)
        both = median_ms(fb, args.repeats)
        rows.append((name, type(layer).__name__, fwd, both - fwd))
        total += both
    logits = model(x)
    loss = median_ms(lambda: (crit(logits, t), crit.backward()), args.repeats)
    opt_ms = median_ms(lambda: (opt.zero_grad(), opt.step()), args.repeats)
    calls = list(tape.calls)

    def by_hand():
        """The same calls without npnet.autograd: each layer's forward and backward called
        directly, in the tape's order, its cache moved aside per call (what the tape does)."""
        opt.zero_grad()
        outs, caches = {}, {}
        for c in calls:
            ins = [outs[s.index] if isinstance(s, npnet.autograd.Call) else x
                   for s in c.sources]
            outs[c.index] = c.module.forward(*ins)
            caches[c.index] = c.module._cache
        crit(outs[calls[-1].index], t)
        grads = {calls[-1].index: crit.backward()}
        for c in reversed(calls):
            c.module._cache = caches.pop(c.index)
            g = grads.pop(c.index)
            if c.index == 0:
                c.module.backward(g, need_grad_in=not c.module.can_skip_grad_in)
                continue
            gi = c.module.backward(g)
            for s, gs in zip(c.sources, (gi,) if len(c.sources) == 1 else gi):
                if isinstance(s, npnet.autograd.Call):
                    grads[s.index] = gs if s.index not in grads else grads[s.index] + gs
        opt.step()
    whole, hand = [], []
    for _ in range(5):                     # the two in turns: they see the same load
        whole.append(median_ms(step, args.repeats // 5 + 10))
        hand.append(median_ms(by_hand, args.repeats // 5 + 10))
    whole, hand = float(np.median(whole)), float(np.median(hand))

    print(f"\n{args.model}, batch {args.batch}, fusion "
          f"{'off' if args.no_fuse else 'on'}, threads {npnet.threads.policy()}")
    print(f"sgemm peak {peak:.0f} GFLOP/s on {npnet.threads.get_num_threads()} threads "
          f"(OpenBLAS, 2048 x 2048 float32)")
    print(f"{'call':<28}{'layer':<20}{'forward ms':>11}{'backward ms':>13}"
          f"{'MFLOP f/b':>14}{'GFLOP/s f/b':>14}{'of peak f/b':>14}")

    def roof(f_ms, b_ms, f_flop, b_flop):
        if not f_flop:
            return ""
        gf, gb = f_flop / f_ms / 1e6, b_flop / b_ms / 1e6       # FLOP / ms / 1e6 = GFLOP/s
        return (f"{f_flop / 1e6:>7.1f}/{b_flop / 1e6:<6.1f}{gf:>7.1f}/{gb:<6.1f}"
                f"{gf / peak:>7.0%}/{gb / peak:<6.0%}")
    for name, kind, f, b in rows:
        print(f"{name:<28}{kind:<20}{f:>11.3f}{b:>13.3f} {roof(f, b, *flop[name])}")
    print(f"{'loss (forward + backward)':<48}{loss:>11.3f}")
    print(f"{'zero_grad + opt.step':<48}{opt_ms:>11.3f}")
    parts = total + loss + opt_ms
    print(f"{'sum of the parts (each timed alone)':<48}{parts:>11.3f}")
    print(f"{'the same calls by hand, no recording':<48}{hand:>11.3f}   -> "
          f"{args.batch / hand * 1e3:,.0f} images/s")
    print(f"{'whole step (the README loop)':<48}{whole:>11.3f}   -> "
          f"{args.batch / whole * 1e3:,.0f} images/s")
    print(f"{'recording and replay (whole - by hand)':<48}{whole - hand:>11.3f}")
    step_flop = sum(f + b for f, b in flop.values())
    print(f"{'the README step, roofline':<48}{step_flop / 1e6:>11.1f} MFLOP, "
          f"{step_flop / whole / 1e6:.1f} GFLOP/s, {step_flop / whole / 1e6 / peak:.0%} of "
          f"the peak (limit {peak * 1e9 / step_flop * args.batch:,.0f} images/s)")


if __name__ == "__main__":
    main()
