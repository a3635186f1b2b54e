"""The small ResNet on the CPU: npnet against PyTorch, measured side by side in one run.

    .venv/bin/python benchmarks/bench_resnet.py [--rounds 5] [--steps 10] [--batches 128]
                                                [--threads N] [--json out.json]
    .venv/bin/python benchmarks/bench_resnet.py --layers [--rounds 5] [--steps 10]
                                                [--batches 128]

Two worker processes: npnet with ``npnet.models.resnet()`` and PyTorch with the same class
text (the source of ``npnet.models.BasicBlock`` and ``ResNet`` run with ``torch.nn`` as
``nn``, the residual ``nn.functional.add(out, s)`` written ``out + s``, as
tests/test_resnet.py builds its twin).  Both hold the same initial weights and train on the
same real MNIST batches; the parent asks them in turn, rotating the order every round.
The training step is the README's (``model.backward(crit.backward())``; torch:
``loss.backward()``), SGD with momentum.  Measured: training images/s at each batch size
and eval-mode inference at batch 1,000, with the ratio npnet / PyTorch (median, min, max).

``--layers`` instead times each layer call of one training forward alone: every call of a
layer that holds no other (conv, batch norm, ReLU, pool, ...; the functional add is not a
layer in torch's twin), on an input of the shape that call saw at the first of
``--batches``, forward then backward with dL/dx (except the first call, whose input is the
images: neither framework computes their gradient in training).  npnet's layer runs its
``forward`` and ``backward`` as a model's replay does (called alone, ``layer(x)`` would also
copy what it keeps of the output it hands back, as npnet/autograd.py says, a copy that
inside a model only the last layer makes); torch's is called.  Each round asks both
workers for the median of ``--steps`` such passes, in turns, and the ratio printed is
PyTorch's time / npnet's (above 1: npnet is faster), so that the convolutions that lose
can be told from those that win on the machine at hand.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_lenet import Process, _batches, _rounds  # noqa: E402  (the same machinery)

SEED, LR, MOMENTUM = 0, 0.01, 0.9
ADD_NPNET, ADD_TORCH = "nn.functional.add(out, self.shortcut(x))", "out + self.shortcut(x)"


class Worker:
    """One framework in its own process, one timed call per request."""

    def __init__(self, kind, threads, files):
        if kind == "torch":
            import torch
            torch.set_num_threads(threads)
            namespace = {"nn": torch.nn}
            exec(open(files["twin"]).read(), namespace)
            self.model = namespace["ResNet"]()
            with np.load(files["init"]) as s:
                self.model.load_state_dict({k: torch.from_numpy(s[k]) for k in s.files})
            self.crit = torch.nn.CrossEntropyLoss()
            self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
            self.as_input = torch.from_numpy
            self.no_grad = torch.inference_mode
            self.info = {"threads": torch.get_num_threads(), "version": torch.__version__}
        else:
            import contextlib

            import npnet
            self.model = npnet.models.resnet()
            with np.load(files["init"]) as s:
                self.model.load_state_dict(dict(s))
            self.crit = npnet.CrossEntropyLoss()
            self.opt = npnet.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
            self.as_input = lambda a: a
            self.no_grad = contextlib.nullcontext
            self.info = {"threads": npnet.threads.policy(), "malloc": npnet.malloc.policy()}
        self.kind, self.data = kind, files["data"]

    def train(self, batch, steps):
        xs, ys = _batches(self.data, batch)
        xs, ys = self.as_input(xs), self.as_input(ys)
        model, crit, opt = self.model, self.crit, self.opt
        model.train()
        t0 = time.perf_counter()
        for i in range(steps):
            xb, yb = xs[i % len(xs)], ys[i % len(ys)]
            opt.zero_grad()
            loss = crit(model(xb), yb)
            if self.kind == "torch":
                loss.backward()
            else:
                model.backward(crit.backward())
            opt.step()
        return time.perf_counter() - t0

    def infer(self, batch, steps):
        xs = self.as_input(_batches(self.data, batch, 2)[0])
        self.model.eval()
        with self.no_grad():
            t0 = time.perf_counter()
            for i in range(steps):
                self.model(xs[i % 2])
            dt = time.perf_counter() - t0
        self.model.train()
        return dt

    def layer(self, name, shape, grad_in, reps):
        """Seconds for one forward + backward of the layer ``name`` alone on an input of
        ``shape`` (dL/dx computed if ``grad_in``): the median of ``reps`` passes."""
        m = dict(self.model.named_modules())[name]
        self.model.train()
        rng = np.random.default_rng(SEED)
        x = rng.standard_normal(shape).astype(np.float32)
        if self.kind == "torch":
            import torch
            x = torch.from_numpy(x).requires_grad_(grad_in)
            g = torch.from_numpy(rng.standard_normal(tuple(m(x).shape)).astype(np.float32))

            def step():
                x.grad = None
                m(x).backward(g)
        else:
            g = rng.standard_normal(m.forward(x).shape).astype(np.float32)

            def step():                           # forward and backward as a model runs
                m.forward(x)                      # them: m(x), a layer called alone, would
                if grad_in:                       # copy what it keeps of its output
                    m.backward(g)
                else:                             # Conv2d's: the images' dL/dx skipped
                    m.backward(g, need_grad_in=False)
        step()                                    # warm: compile, fill the caches
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    def describe(self):
        return self.info


def worker_main(kind, threads, files):
    out, sys.stdout = sys.stdout, sys.stderr          # keep the protocol channel clean
    w = Worker(kind, threads, files)
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg.pop("cmd")
        if cmd == "quit":
            break
        out.write(json.dumps({"result": getattr(w, cmd)(**msg)}) + "\n")
        out.flush()


def compare(workers, rounds, label, cmd, images, **kw):
    rates = _rounds(workers, rounds, lambda w: images / w(cmd, **kw))
    ratios = [a / b for a, b in zip(rates["npnet"], rates["torch"])]
    print(f"{label:<26}{np.median(rates['npnet']):>12,.0f}{np.median(rates['torch']):>12,.0f}"
          f"{np.median(ratios):>9.2f}{min(ratios):>8.2f}{max(ratios):>8.2f}", flush=True)
    return {"what": label, "npnet_images_per_s": rates["npnet"],
            "torch_images_per_s": rates["torch"], "ratio": ratios}


def layer_calls(model, batch):
    """[(label, name, input shape)] for each call of a layer holding no other in one
    training forward of ``model`` at ``batch``, in order; a layer's k-th call is labelled
    'name#k' (the tape's names)."""
    import npnet
    calls, seen = [], {}

    def hook(name):
        def record(module, args, out):
            k = seen[name] = seen.get(name, 0) + 1
            calls.append((npnet.autograd.call_name(name, k), name, tuple(args[0].shape)))
        return record
    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if n and not m._modules]
    model.train()
    model(np.zeros((batch, 1, 28, 28), np.float32))
    for h in handles:
        h.remove()
    return calls


def compare_layers(workers, model, rounds, batch, steps):
    """Each layer call of ``model`` (the workers' ResNet) alone, in both workers in turns:
    a row per call and their sums."""
    print(f"\n{'layer call, batch ' + str(batch):<26}{'input':<20}{'npnet ms':>10}"
          f"{'torch ms':>10}{'ratio':>8}{'min':>7}{'max':>7}   (forward + backward, "
          f"median over {rounds} rounds; ratio = torch time / npnet time)")
    rows, sums = [], {"npnet": 0.0, "torch": 0.0}
    for i, (label, name, shape) in enumerate(layer_calls(model, batch)):
        t = _rounds(workers, rounds, lambda w: w("layer", name=name, shape=shape,
                                                  grad_in=i > 0, reps=steps))
        ratios = [b / a for a, b in zip(t["npnet"], t["torch"])]
        ms = {k: float(np.median(v)) * 1e3 for k, v in t.items()}
        for k in sums:
            sums[k] += ms[k]
        print(f"{label:<26}{str(shape[1:]):<20}{ms['npnet']:>10.2f}{ms['torch']:>10.2f}"
              f"{np.median(ratios):>8.2f}{min(ratios):>7.2f}{max(ratios):>7.2f}", flush=True)
        rows.append({"call": label, "input_shape": shape, "npnet_s": t["npnet"],
                     "torch_s": t["torch"], "ratio": ratios})
    print(f"{'sum of the calls':<46}{sums['npnet']:>10.2f}{sums['torch']:>10.2f}"
          f"{sums['torch'] / sums['npnet']:>8.2f}")
    return rows


def compare_models(workers, rounds, batches, steps):
    """The whole model: training at each batch size, then inference at batch 1,000."""
    for w in workers:                             # warm-up: compile, fill the caches
        for b in batches:
            w("train", batch=b, steps=2)
        w("infer", batch=1000, steps=1)
    print(f"\n{'ResNet':<26}{'npnet img/s':>12}{'torch img/s':>12}"
          f"{'ratio':>9}{'min':>8}{'max':>8}   (median over {rounds} rounds)")
    rows = [compare(workers, rounds, f"train, batch {b}", "train", b * steps, batch=b,
                    steps=steps) for b in batches]
    rows.append(compare(workers, rounds, "inference, batch 1000", "infer", 1000 * 2,
                        batch=1000, steps=2))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="training steps per round")
    ap.add_argument("--batches", type=int, nargs="+", default=[128])
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for both (default: npnet's default, every core)")
    ap.add_argument("--json", metavar="FILE", help="write the figures to FILE")
    ap.add_argument("--layers", action="store_true",
                    help="time each layer call alone instead of the whole model")
    ap.add_argument("--worker", choices=["npnet", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.threads, json.loads(args.files))

    import npnet
    from npnet import models
    threads = args.threads or npnet.threads.get_num_threads()
    tmp = tempfile.TemporaryDirectory(prefix="npnet-bench-")
    files = {k: os.path.join(tmp.name, f) for k, f in
             (("init", "init.npz"), ("data", "mnist.npz"), ("twin", "twin.py"))}
    model = models.resnet(rng=np.random.default_rng(SEED))         # the workers' weights
    np.savez(files["init"], **model.state_dict())
    source = inspect.getsource(models.BasicBlock) + "\n\n" + inspect.getsource(models.ResNet)
    assert source.count(ADD_NPNET) == 1
    with open(files["twin"], "w") as f:
        f.write(source.replace(ADD_NPNET, ADD_TORCH))
    images, labels = npnet.data.load_mnist(split="train")
    order = np.random.default_rng(SEED).permutation(len(images))[:4096]
    np.savez(files["data"], x=npnet.data.normalize(images[order], npnet.data.MNIST_MEAN,
                                                   npnet.data.MNIST_STD),
             y=labels[order].astype(np.int64))
    workers = [Process(kind, __file__, ["--worker", kind, "--files", json.dumps(files)], threads)
               for kind in ("npnet", "torch")]
    results = {"threads": threads, "rounds": args.rounds, "steps": args.steps}
    try:
        results["npnet_info"], results["torch_info"] = (w("describe") for w in workers)
        print(f"npnet {results['npnet_info']}\ntorch {results['torch_info']}")
        if args.layers:
            results["layers"] = compare_layers(workers, model, args.rounds,
                                               args.batches[0], args.steps)
        else:
            results["rows"] = compare_models(workers, args.rounds, args.batches, args.steps)
    finally:
        for w in workers:
            w.close()
        tmp.cleanup()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main()
