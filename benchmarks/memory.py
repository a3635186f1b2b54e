"""Peak resident memory of training and evaluating LeNet-5, each measured in a new process.

    python benchmarks/memory.py            # prints a table; --json FILE writes the figures

Each case runs in its own Python process and reports its peak resident set size
(``ru_maxrss``), so no case inherits another's high-water mark.  'import npnet' is the floor
every case shares (NumPy, Numba, the compiled kernels).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

TRAIN_SCRIPT = str(Path(__file__).resolve().parents[1] / "examples" / "train_lenet.py")

CASES = {
    "import npnet": "",
    "train, batch 256, 50 steps (synthetic data)": """
        rng = np.random.default_rng(0)
        model = npnet.lenet5(rng=rng)
        crit = npnet.CrossEntropyLoss()
        opt = npnet.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        x = rng.standard_normal((256, 1, 28, 28)).astype(np.float32)
        y = rng.integers(0, 10, 256)
        for _ in range(50):
            opt.zero_grad()
            crit(model(x), y)
            model.backward(crit.backward())
            opt.step()
    """,
    "train, batch 256, 1 epoch of MNIST (train_lenet.py data + loop)": """
        import runpy, tempfile
        sys.argv = ["train_lenet.py", "--batch-size", "256", "--epochs", "1", "--no-plots",
                    "--no-progress", "--out", tempfile.mkdtemp()]
        try:
            runpy.run_path(TRAIN_SCRIPT, run_name="__main__")
        except SystemExit as e:                  # the script ends with sys.exit(main())
            assert not e.code, e.code
    """,
    "evaluate 10,000 test images in batches of 1,000": """
        images, labels = npnet.data.load_mnist(split="test")
        x = npnet.data.normalize(images, npnet.data.MNIST_MEAN, npnet.data.MNIST_STD)
        model = npnet.lenet5(rng=np.random.default_rng(0)).eval()
        logits = np.concatenate([model(x[i:i + 1000]) for i in range(0, len(x), 1000)])
    """,
    "evaluate 10,000 test images in one batch (for comparison)": """
        images, labels = npnet.data.load_mnist(split="test")
        x = npnet.data.normalize(images, npnet.data.MNIST_MEAN, npnet.data.MNIST_STD)
        model = npnet.lenet5(rng=np.random.default_rng(0)).eval()
        logits = model(x)
    """,
}

PRELUDE = f"""
TRAIN_SCRIPT = {TRAIN_SCRIPT!r}
import resource, sys
import numpy as np
import npnet
"""
EPILOGUE = """
print("PEAK_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)   # KiB on Linux
"""


def peak_mib(body: str) -> float:
    code = PRELUDE + textwrap.dedent(body) + EPILOGUE
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    peak = [line for line in out.splitlines() if line.startswith("PEAK_KIB ")][-1]
    return int(peak.split()[1]) / 1024


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(argv)
    figures = {}
    print(f"{'case':<68}{'peak RSS (MiB)':>16}")
    for name, body in CASES.items():
        figures[name] = peak_mib(body)
        print(f"{name:<68}{figures[name]:>16.0f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
