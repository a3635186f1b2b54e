"""LeNet-5 on the CPU: npnet against PyTorch, measured side by side in one run.

    make bench        # = .venv/bin/python benchmarks/bench_lenet.py
    .venv/bin/python benchmarks/bench_lenet.py [--rounds 5] [--steps 60] [--threads N]
                                               [--batches 64 256] [--json out.json]
                                               [--no-startup | --startup-only |
                                                --latency-only]

Three worker processes: PyTorch with the seed's class, npnet with ``npnet.lenet5()`` (a
Sequential) and npnet with the seed's class on ``npnet.nn`` (``npnet.models.LeNet5``).  All
three hold the same initial weights (npnet's, copied) and train on the same real MNIST
batches (normalised, shuffled with one seed).  The parent asks them in turn, rotating the
order every round, for one timed round each, so all see the same machine load; separate
processes keep each framework's thread pool away from the other's.  torch gets
``torch.set_num_threads(N)`` with N = npnet's kernel threads.

The training step is the README's, as a user writes it::

    opt.zero_grad()
    loss = crit(model(xb), yb)
    model.backward(crit.backward())          # torch: loss.backward()
    opt.step()

Measured, each as images/s per round and the ratio npnet/PyTorch (median, min, max):
training at each ``--batches`` size (SGD, lr 0.01, momentum 0.9); eval-mode inference at
batch 1,000 (torch under ``torch.inference_mode()``); the median latency of one image; and
the start-up: ``import npnet`` + building LeNet-5 + the first training step in a NEW
process, with an empty Numba cache (cold), then with it filled (warm), and with a new cache
filled by ``python -m npnet.kernels.warm`` (what ``make`` runs when it builds .venv).

Each throughput is also printed as a fraction of the machine's limit: the images/s at
which the step's floating-point work (``roofline.per_image``, from the layers' shapes:
LeNet-5 2.26 MFLOP per image to train, 0.83 to infer) would run at the sgemm peak,
measured in a fourth process on the same threads (``roofline.sgemm_gflops``) just before
the comparisons, and again after them to show whether the machine's load changed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import roofline  # noqa: E402  (benchmarks/roofline.py: FLOP counts and the sgemm peak)
from baseline import in_turns  # noqa: E402  (benchmarks/baseline.py: the rotation)

SEED = 0
LR, MOMENTUM = 0.01, 0.9
MODELS = ("npnet lenet5()", "npnet LeNet5 class")


# ---------------------------------------------------------------------------------------
# workers: one process per framework and model, driven by JSON lines on stdin/stdout
# ---------------------------------------------------------------------------------------
def _batches(data, batch, n_batches=8):
    """The first n_batches * batch images of the shuffled training set, as (x, y)."""
    with np.load(data) as d:
        x, y = d["x"], d["y"]
    n = n_batches * batch
    reps = -(-n // len(x))
    x, y = np.concatenate([x] * reps)[:n], np.concatenate([y] * reps)[:n]
    return x.reshape(n_batches, batch, 1, 28, 28), y.reshape(n_batches, batch)


class NpnetWorker:
    def __init__(self, model, init, data):
        import npnet
        self.npnet, self.data = npnet, data
        self.model = npnet.lenet5() if model == "lenet5" else npnet.models.LeNet5()
        with np.load(init) as state:
            self.model.load_state_dict(dict(state))
        self.crit = npnet.CrossEntropyLoss()
        self.opt = npnet.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)

    def train(self, batch, steps):
        model, crit, opt = self.model, self.crit, self.opt
        xs, ys = _batches(self.data, batch)
        model.train()
        t0 = time.perf_counter()
        for i in range(steps):
            xb, yb = xs[i % len(xs)], ys[i % len(ys)]
            opt.zero_grad()
            loss = crit(model(xb), yb)          # noqa: F841  (the README's step)
            model.backward(crit.backward())
            opt.step()
        return time.perf_counter() - t0

    def infer(self, batch, steps):
        xs, _ = _batches(self.data, batch, 2)
        self.model.eval()
        t0 = time.perf_counter()
        for i in range(steps):
            self.model(xs[i % 2])
        dt = time.perf_counter() - t0
        self.model.train()
        return dt

    def latency(self, calls):
        x = _batches(self.data, 1, 1)[0][0]
        self.model.eval()
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            self.model(x)
            times.append(time.perf_counter() - t0)
        self.model.train()
        return float(np.median(times))

    def info(self):
        return {"threads": self.npnet.threads.policy(), "malloc": self.npnet.malloc.policy()}


class TorchWorker:
    def __init__(self, threads, init, data):
        import torch
        from torch import nn
        torch.set_num_threads(threads)
        self.torch, self.data = torch, data

        class LeNet5(nn.Module):          # the seed's class, padding=2 on conv1 for 28x28
            def __init__(self):
                super().__init__()
                self.conv1 = nn.Conv2d(in_channels=1, out_channels=6, kernel_size=5,
                                       stride=1, padding=2)
                self.conv2 = nn.Conv2d(in_channels=6, out_channels=16, kernel_size=5)
                self.conv3 = nn.Conv2d(in_channels=16, out_channels=120, kernel_size=5)
                self.fc1 = nn.Linear(in_features=120, out_features=84)
                self.fc2 = nn.Linear(in_features=84, out_features=10)
                self.relu = nn.ReLU()
                self.pool = nn.MaxPool2d(kernel_size=2, stride=2)

            def forward(self, x):
                x = self.pool(self.relu(self.conv1(x)))
                x = self.pool(self.relu(self.conv2(x)))
                x = self.relu(self.conv3(x))
                x = x.view(x.size(0), -1)
                return self.fc2(self.relu(self.fc1(x)))

        self.model = LeNet5()
        # the same initial weights as npnet's (npnet's layout and keys are torch's), written
        # by the parent: this process never imports npnet (nor its threading policy)
        with np.load(init) as state:
            self.model.load_state_dict({k: torch.from_numpy(state[k]) for k in state.files})
        self.crit = nn.CrossEntropyLoss()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)

    def train(self, batch, steps):
        torch = self.torch
        xs, ys = _batches(self.data, batch)
        xs, ys = torch.from_numpy(xs), torch.from_numpy(ys)
        model, crit, opt = self.model, self.crit, self.opt
        model.train()
        t0 = time.perf_counter()
        for i in range(steps):
            xb, yb = xs[i % len(xs)], ys[i % len(ys)]
            opt.zero_grad()
            loss = crit(model(xb), yb)
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    def infer(self, batch, steps):
        torch = self.torch
        xs = torch.from_numpy(_batches(self.data, batch, 2)[0])
        self.model.eval()
        with torch.inference_mode():
            t0 = time.perf_counter()
            for i in range(steps):
                self.model(xs[i % 2])
            dt = time.perf_counter() - t0
        self.model.train()
        return dt

    def latency(self, calls):
        torch = self.torch
        x = torch.from_numpy(_batches(self.data, 1, 1)[0][0])
        self.model.eval()
        times = []
        with torch.inference_mode():
            for _ in range(calls):
                t0 = time.perf_counter()
                self.model(x)
                times.append(time.perf_counter() - t0)
        self.model.train()
        return float(np.median(times))

    def info(self):
        torch = self.torch
        return {"threads": torch.get_num_threads(), "version": torch.__version__}


class SgemmWorker:
    """The peak: large float32 products with OpenBLAS, in a process without npnet."""

    def __init__(self, threads):
        self.threads = threads

    def peak(self):
        return roofline.sgemm_gflops(self.threads)


def worker_main(kind, threads, init, data):
    out = sys.stdout
    sys.stdout = sys.stderr                  # keep the protocol channel clean
    if kind == "sgemm":
        w = SgemmWorker(threads)
    else:
        w = TorchWorker(threads, init, data) if kind == "torch" else NpnetWorker(kind, init, data)
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg.pop("cmd")
        if cmd == "quit":
            break
        result = getattr(w, cmd)(**msg)
        out.write(json.dumps({"result": result}) + "\n")
        out.flush()


class Process:
    """A worker process of a benchmark script, asked for one timed call per JSON line."""

    def __init__(self, name, script, args, threads):
        env = dict(os.environ, NPNET_NUM_THREADS=str(threads))
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(script), *args, "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)

    def __call__(self, cmd, **kw):
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker died (see its stderr above)")
        return json.loads(line)["result"]

    def close(self):
        try:
            self("quit")
        except (BrokenPipeError, RuntimeError, json.JSONDecodeError):
            pass
        self.proc.wait(timeout=30)


class Worker(Process):
    def __init__(self, name, kind, threads, init, data):
        super().__init__(name, __file__, ["--worker", kind, "--init", init, "--data", data],
                         threads)


# ---------------------------------------------------------------------------------------
# start-up time in a new process
# ---------------------------------------------------------------------------------------
FIRST_STEP = r"""
import time
t0 = time.perf_counter()
import numpy as np
import npnet
t_import = time.perf_counter() - t0
rng = np.random.default_rng(0)
model = npnet.lenet5(rng=rng)
crit, opt = npnet.CrossEntropyLoss(), npnet.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
y = rng.integers(0, 10, 64)
opt.zero_grad()
crit(model(x), y)
model.backward(crit.backward())
opt.step()
print(t_import, time.perf_counter() - t0)
"""


def _first_step(env):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", FIRST_STEP], env=env, cwd=ROOT,
                       capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    t_import, t_total = map(float, r.stdout.split())
    return {"import_s": t_import, "import_and_first_step_s": t_total, "process_wall_s": wall}


def first_step_times(threads):
    """{'cold', 'warm', 'installed'}: seconds for import + first step, in-process and wall
    clock, with an empty Numba cache, then with it filled by that run, and in a new empty
    cache filled by ``python -m npnet.kernels.warm`` (what the Makefile runs when it
    builds .venv; its own time is 'warm_module_s')."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="npnet-numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, NPNET_NUM_THREADS=str(threads))
        out["cold"] = _first_step(env)
        out["warm"] = _first_step(env)
    with tempfile.TemporaryDirectory(prefix="npnet-numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, NPNET_NUM_THREADS=str(threads))
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "npnet.kernels.warm"], env=env, cwd=ROOT,
                       capture_output=True, text=True, check=True)
        out["warm_module_s"] = time.perf_counter() - t0
        out["installed"] = _first_step(env)
    return out


# ---------------------------------------------------------------------------------------
# the comparison
# ---------------------------------------------------------------------------------------
def _rounds(workers, rounds, call):
    """``call(worker)`` for every worker, ``rounds`` times, rotating who goes first."""
    results = {w.name: [] for w in workers}
    for w in in_turns(workers, rounds):
        results[w.name].append(call(w))
    return results


def compare(workers, rounds, label, cmd, images, limit, **kw):
    """images/s per round for each worker, each npnet model's ratio to torch, and each
    median as a fraction of ``limit`` (images/s at the sgemm peak)."""
    rates = _rounds(workers, rounds, lambda w: images / w(cmd, **kw))
    torch_fraction = float(np.median(rates["torch"])) / limit
    row = {"what": label, "torch_images_per_s": rates["torch"], "limit_images_per_s": limit,
           "torch_fraction_of_limit": torch_fraction}
    for name in MODELS:
        ratios = [a / b for a, b in zip(rates[name], rates["torch"])]
        fraction = float(np.median(rates[name])) / limit
        row[name] = {"images_per_s": rates[name], "ratio": ratios,
                     "fraction_of_limit": fraction}
        print(f"{label:<24}{name:<20}{np.median(rates[name]):>12,.0f}"
              f"{np.median(rates['torch']):>12,.0f}{np.median(ratios):>9.2f}"
              f"{min(ratios):>8.2f}{max(ratios):>8.2f}{fraction:>9.1%}{torch_fraction:>9.1%}",
              flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=60, help="training steps per round")
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for both (default: npnet's default, every core)")
    ap.add_argument("--json", metavar="FILE", help="write the figures to FILE")
    startup_args = ap.add_mutually_exclusive_group()
    startup_args.add_argument("--no-startup", action="store_true",
                              help="skip the start-up test")
    startup_args.add_argument("--startup-only", action="store_true",
                              help="only the start-up test")
    startup_args.add_argument("--latency-only", action="store_true",
                              help="only the one-image latency (no training, inference "
                                   "or start-up rows): a minute instead of several")
    ap.add_argument("--worker", choices=["lenet5", "seed", "torch", "sgemm"],
                    help=argparse.SUPPRESS)
    ap.add_argument("--init", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        return worker_main(args.worker, args.threads, args.init, args.data)
    import npnet
    if args.threads is None:
        args.threads = npnet.threads.get_num_threads()
    machine = roofline.cpu()
    print(f"machine: {machine}, {os.cpu_count()} cores")
    if args.startup_only:
        return _finish({"threads": args.threads, "machine": machine,
                        "startup": startup(args.threads)}, args.json)
    tmp = tempfile.TemporaryDirectory(prefix="npnet-bench-")
    init = os.path.join(tmp.name, "init.npz")
    np.savez(init, **npnet.lenet5(rng=np.random.default_rng(SEED)).state_dict())
    images, labels = npnet.data.load_mnist(split="train")
    order = np.random.default_rng(SEED).permutation(len(images))[:4096]
    data = os.path.join(tmp.name, "mnist.npz")
    np.savez(data, x=npnet.data.normalize(images[order], npnet.data.MNIST_MEAN,
                                          npnet.data.MNIST_STD),
             y=labels[order].astype(np.int64))

    # FLOP per image, from the layers' shapes; the two models are the same network
    two = np.zeros((2, 1, 28, 28), np.float32)
    flops = roofline.per_image(npnet.lenet5(), two)
    if roofline.per_image(npnet.models.LeNet5(), two) != flops:
        raise RuntimeError("the two LeNet-5s differ in FLOP per image")

    workers = [Worker("torch", "torch", args.threads, init, data),
               Worker(MODELS[0], "lenet5", args.threads, init, data),
               Worker(MODELS[1], "seed", args.threads, init, data)]
    sgemm = Worker("sgemm", "sgemm", args.threads, init, data)
    results = {"threads": args.threads, "machine": machine, "cpu_count": os.cpu_count(),
               "data": "MNIST",
               "rounds": args.rounds, "steps": args.steps, "flop_per_image": flops,
               "rows": []}
    try:
        results["npnet_info"] = workers[1]("info")
        results["torch_info"] = workers[0]("info")
        print(f"npnet {results['npnet_info']}\ntorch {results['torch_info']}")
        # warm-up: compile, fill caches and buffers, once per shape
        for w in workers:
            if not args.latency_only:
                for b in args.batches:
                    w("train", batch=b, steps=3)
                w("infer", batch=1000, steps=1)
            w("latency", calls=5)
        peaks = [sgemm("peak")]
        print(f"sgemm peak {peaks[0]:.0f} GFLOP/s on {args.threads} threads; LeNet-5 "
              f"{flops['train'] / 1e6:.2f} MFLOP per image to train, "
              f"{flops['infer'] / 1e6:.2f} to infer -> limits "
              f"{peaks[0] * 1e9 / flops['train']:,.0f} and "
              f"{peaks[0] * 1e9 / flops['infer']:,.0f} img/s")
        print(f"\n(median over {args.rounds} rounds, order rotating; the last two columns: "
              f"the share of the limit each reaches)\n{'':<24}{'':<20}{'npnet img/s':>12}"
              f"{'torch img/s':>12}{'ratio':>9}{'min':>8}{'max':>8}{'npnet':>9}{'torch':>9}")
        timed = []                                # (label, cmd, images, FLOP kind, kw)
        for b in [] if args.latency_only else args.batches:
            timed.append((f"train, batch {b}", "train", b * args.steps, "train",
                          dict(batch=b, steps=args.steps)))
        if not args.latency_only:
            timed.append(("inference, batch 1000", "infer", 1000 * 5, "infer",
                          dict(batch=1000, steps=5)))
        for label, cmd, images, kind, kw in timed:
            results["rows"].append(compare(workers, args.rounds, label, cmd, images,
                                           peaks[0] * 1e9 / flops[kind], **kw))
        lat = _rounds(workers, args.rounds, lambda w: w("latency", calls=200) * 1e3)
        results["latency_ms"] = lat
        best_ms = flops["infer"] / (peaks[0] * 1e9) * 1e3      # one image at the peak
        for name in MODELS:
            ratios = [t / n for n, t in zip(lat[name], lat["torch"])]
            print(f"{'latency, 1 image (ms)':<24}{name:<20}{np.median(lat[name]):>12.3f}"
                  f"{np.median(lat['torch']):>12.3f}{np.median(ratios):>9.2f}"
                  f"{min(ratios):>8.2f}{max(ratios):>8.2f}"
                  f"{best_ms / np.median(lat[name]):>9.1%}"
                  f"{best_ms / np.median(lat['torch']):>9.1%}   (torch time / npnet time)")
        peaks.append(sgemm("peak"))
        results["sgemm_gflops"] = peaks
        print(f"\nsgemm peak after the comparisons {peaks[1]:.0f} GFLOP/s (before "
              f"{peaks[0]:.0f}; the fractions above use the one before)")
    finally:
        for w in workers + [sgemm]:
            w.close()
        tmp.cleanup()

    if not (args.no_startup or args.latency_only):
        results["startup"] = startup(args.threads)
    return _finish(results, args.json)


def startup(threads):
    """first_step_times, printed."""
    t = first_step_times(threads)
    print("\nimport npnet + first training step in a new process (s):")
    for name, key in (("cold Numba cache", "cold"), ("warm Numba cache", "warm"),
                      ("after python -m npnet.kernels.warm", "installed")):
        d = t[key]
        print(f"  {name}: {d['import_and_first_step_s']:.2f} in-process "
              f"(import {d['import_s']:.2f}), {d['process_wall_s']:.2f} process wall")
    print(f"  (python -m npnet.kernels.warm itself, into the empty cache: "
          f"{t['warm_module_s']:.1f} s)")
    return t


def _finish(results, path):
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
        print(f"\nwrote {path}")
    return results


if __name__ == "__main__":
    main()
