"""LeNet-5 on the CPU: npnet against PyTorch, measured side by side in one run.

    .venv/bin/python benchmarks/bench_lenet.py [--rounds 5] [--steps 60] [--threads N]
                                               [--batches 64 256] [--json out.json]

Two worker processes, one per framework, hold the same model (torch's weights are
copied from npnet's initial ones: same initialisation) and the same synthetic batches
(standard-normal images, random labels; the speed does not depend on the values).  The
parent asks them in turn, A B, B A, A B, ... (the first alternates to cancel drift) for
one timed round each, so both see the same machine load.  Separate processes keep each
framework's thread pool away from the other's; torch gets torch.set_num_threads(N) with
N = npnet's kernel threads.

Measured, each as images/s per round and the ratio npnet/PyTorch (median, min, max over
rounds):
* training: ``--steps`` steps of  zero_grad, forward, cross-entropy, backward, SGD step
  (lr 0.01, momentum 0.9), written as a user writes them, at each ``--batches`` size;
* inference: eval mode, batches of 1,000 (torch under ``torch.inference_mode()``);
* latency: one image, eval mode, the median time of a forward call;
* start-up: ``import npnet`` + building LeNet-5 + the first training step (batch 64) in a
  NEW process, with an empty Numba cache (cold: NUMBA_CACHE_DIR points at an empty
  temporary directory) and then with that cache filled (warm: the same command again).
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
SEED = 0
LR, MOMENTUM = 0.01, 0.9


# ---------------------------------------------------------------------------------------
# workers: one process per framework, driven by JSON lines on stdin/stdout
# ---------------------------------------------------------------------------------------
def _data(batch, n_batches=8):
    rng = np.random.default_rng(SEED + batch)
    x = rng.standard_normal((n_batches, batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, (n_batches, batch))
    return x, y


class NpnetWorker:
    def __init__(self):
        import npnet
        from npnet.losses import CrossEntropyLoss
        from npnet.optim import SGD
        self.npnet = npnet
        self.model = npnet.lenet5(rng=np.random.default_rng(SEED))
        self.crit = CrossEntropyLoss()
        self.opt = SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)

    def train(self, batch, steps):
        model, crit, opt = self.model, self.crit, self.opt
        xs, ys = _data(batch)
        model.train()
        t0 = time.perf_counter()
        for i in range(steps):
            x, y = xs[i % len(xs)], ys[i % len(ys)]
            opt.zero_grad()
            logits = model(x)
            crit(logits, y)
            model.backward(crit.backward(), need_grad_in=False)
            opt.step()
        return time.perf_counter() - t0

    def infer(self, batch, steps):
        xs, _ = _data(batch, 2)
        self.model.eval()
        t0 = time.perf_counter()
        for i in range(steps):
            self.model(xs[i % 2])
        dt = time.perf_counter() - t0
        self.model.train()
        return dt

    def latency(self, calls):
        x = _data(1, 1)[0][0]
        self.model.eval()
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            self.model(x)
            times.append(time.perf_counter() - t0)
        self.model.train()
        return float(np.median(times))

    def info(self):
        return {"threads": self.npnet.threads.policy()}


class TorchWorker:
    def __init__(self, threads, init):
        import torch
        torch.set_num_threads(threads)
        self.torch = torch
        nn = torch.nn
        self.model = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 120, 5), nn.ReLU(), nn.Flatten(),
            nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
        # the same initial weights as npnet's model (npnet's layout is torch's), written
        # by the parent: this process never imports npnet (nor its threading policy)
        with np.load(init) as state, torch.no_grad():
            for p, key in zip(self.model.parameters(), state.files):
                p.copy_(torch.from_numpy(state[key]))
        self.crit = nn.CrossEntropyLoss()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)

    def train(self, batch, steps):
        torch = self.torch
        xs, ys = _data(batch)
        xs, ys = torch.from_numpy(xs), torch.from_numpy(ys)
        model, crit, opt = self.model, self.crit, self.opt
        model.train()
        t0 = time.perf_counter()
        for i in range(steps):
            x, y = xs[i % len(xs)], ys[i % len(ys)]
            opt.zero_grad()
            loss = crit(model(x), y)
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    def infer(self, batch, steps):
        torch = self.torch
        xs = torch.from_numpy(_data(batch, 2)[0])
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
        x = torch.from_numpy(_data(1, 1)[0][0])
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


def worker_main(kind, threads, init):
    out = sys.stdout
    sys.stdout = sys.stderr                  # keep the protocol channel clean
    w = NpnetWorker() if kind == "npnet" else TorchWorker(threads, init)
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg.pop("cmd")
        if cmd == "quit":
            break
        result = getattr(w, cmd)(**msg)
        out.write(json.dumps({"result": result}) + "\n")
        out.flush()


class Worker:
    def __init__(self, kind, threads, init):
        env = dict(os.environ, NPNET_NUM_THREADS=str(threads))
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", kind,
             "--threads", str(threads), "--init", init],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)

    def __call__(self, cmd, **kw):
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.kind} worker died (see its stderr above)")
        return json.loads(line)["result"]

    def close(self):
        try:
            self("quit")
        except (BrokenPipeError, RuntimeError, json.JSONDecodeError):
            pass
        self.proc.wait(timeout=30)


# ---------------------------------------------------------------------------------------
# start-up time in a new process
# ---------------------------------------------------------------------------------------
FIRST_STEP = r"""
import time
t0 = time.perf_counter()
import numpy as np
import npnet
from npnet.losses import CrossEntropyLoss
from npnet.optim import SGD
t_import = time.perf_counter() - t0
rng = np.random.default_rng(0)
model = npnet.lenet5(rng=rng)
crit, opt = CrossEntropyLoss(), SGD(model.parameters(), lr=0.01, momentum=0.9)
x = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
y = rng.integers(0, 10, 64)
opt.zero_grad()
crit(model(x), y)
model.backward(crit.backward(), need_grad_in=False)
opt.step()
print(t_import, time.perf_counter() - t0)
"""


def first_step_times(threads):
    """(cold, warm) dicts: seconds for import + first step, in-process and wall clock."""
    out = []
    with tempfile.TemporaryDirectory(prefix="npnet-numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, NPNET_NUM_THREADS=str(threads))
        for _ in ("cold", "warm"):
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-c", FIRST_STEP], env=env, cwd=ROOT,
                               capture_output=True, text=True, check=True)
            wall = time.perf_counter() - t0
            t_import, t_total = map(float, r.stdout.split())
            out.append({"import_s": t_import, "import_and_first_step_s": t_total,
                        "process_wall_s": wall})
    return out


# ---------------------------------------------------------------------------------------
# the comparison
# ---------------------------------------------------------------------------------------
def compare(workers, rounds, label, cmd, images, **kw):
    """Alternate the workers for ``rounds`` rounds; images/s per round for each."""
    rates = {w.kind: [] for w in workers}
    for r in range(rounds):
        order = workers if r % 2 == 0 else workers[::-1]
        for w in order:
            rates[w.kind].append(images / w(cmd, **kw))
    ratios = [a / b for a, b in zip(rates["npnet"], rates["torch"])]
    row = {"what": label, "npnet_images_per_s": rates["npnet"],
           "torch_images_per_s": rates["torch"], "ratio": ratios}
    print(f"{label:<24}{np.median(rates['npnet']):>12,.0f}{np.median(rates['torch']):>12,.0f}"
          f"{np.median(ratios):>9.2f}{min(ratios):>8.2f}{max(ratios):>8.2f}", flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=60, help="training steps per round")
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for both (default: npnet's default, every core)")
    ap.add_argument("--json", metavar="FILE", help="write the figures to FILE")
    ap.add_argument("--no-startup", action="store_true", help="skip the start-up test")
    ap.add_argument("--worker", choices=["npnet", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--init", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        return worker_main(args.worker, args.threads, args.init)
    import npnet
    if args.threads is None:
        args.threads = npnet.threads.get_num_threads()
    tmp = tempfile.TemporaryDirectory(prefix="npnet-bench-")
    init = os.path.join(tmp.name, "init.npz")
    np.savez(init, **npnet.lenet5(rng=np.random.default_rng(SEED)).state_dict())

    workers = [Worker("npnet", args.threads, init), Worker("torch", args.threads, init)]
    results = {"threads": args.threads, "cpu_count": os.cpu_count(),
               "rounds": args.rounds, "steps": args.steps, "rows": []}
    try:
        results["npnet_info"], results["torch_info"] = workers[0]("info"), workers[1]("info")
        print(f"npnet {results['npnet_info']}\ntorch {results['torch_info']}")
        # warm-up: compile, fill caches and buffers, once per shape
        for w in workers:
            for b in args.batches:
                w("train", batch=b, steps=3)
            w("infer", batch=1000, steps=1)
            w("latency", calls=5)
        print(f"\n{'':<24}{'npnet img/s':>12}{'torch img/s':>12}{'ratio':>9}{'min':>8}"
              f"{'max':>8}   (median over {args.rounds} alternating rounds)")
        for b in args.batches:
            results["rows"].append(compare(workers, args.rounds, f"train, batch {b}", "train",
                                           b * args.steps, batch=b, steps=args.steps))
        results["rows"].append(compare(workers, args.rounds, "inference, batch 1000",
                                       "infer", 1000 * 5, batch=1000, steps=5))
        lat = {w.kind: [] for w in workers}
        for r in range(args.rounds):
            for w in (workers if r % 2 == 0 else workers[::-1]):
                lat[w.kind].append(w("latency", calls=200) * 1e3)
        ratios = [t / n for n, t in zip(lat["npnet"], lat["torch"])]
        results["latency_ms"] = {"npnet": lat["npnet"], "torch": lat["torch"],
                                 "speed_ratio": ratios}
        print(f"{'latency, 1 image (ms)':<24}{np.median(lat['npnet']):>12.3f}"
              f"{np.median(lat['torch']):>12.3f}{np.median(ratios):>9.2f}{min(ratios):>8.2f}"
              f"{max(ratios):>8.2f}   (ratio: torch time / npnet time)")
    finally:
        for w in workers:
            w.close()
        tmp.cleanup()

    if not args.no_startup:
        cold, warm = first_step_times(args.threads)
        results["startup"] = {"cold": cold, "warm": warm}
        print("\nimport npnet + first training step in a new process (s):")
        for name, d in (("cold Numba cache", cold), ("warm Numba cache", warm)):
            print(f"  {name}: {d['import_and_first_step_s']:.2f} in-process "
                  f"(import {d['import_s']:.2f}), {d['process_wall_s']:.2f} process wall")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main()
