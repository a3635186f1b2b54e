"""The teaching examples run: examples/backprop_step_by_step.py and examples/visualize.py.

Both use the first MNIST test image (fetched by ``make test``); each runs as a subprocess,
as a reader would run it.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import npnet

ROOT = Path(__file__).resolve().parents[1]
BACKPROP = ROOT / "examples" / "backprop_step_by_step.py"
VISUALIZE = ROOT / "examples" / "visualize.py"
LAYERS = ["conv1", "act1", "pool1", "conv2", "act2", "pool2", "conv3", "act3", "flatten",
          "fc1", "act4", "fc2"]
PNGS = ["conv1_filters.png", "feature_maps_conv1.png", "feature_maps_conv2.png",
        "feature_maps_conv3.png", "saliency.png"]


def run(args, stdin=subprocess.DEVNULL, timeout=300):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, stdin=stdin,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def terminal():
    """A pseudo-terminal for the child's stdin: isatty() is True there, as for a reader.

    Yields (master_fd, slave_fd); whatever is written to master_fd is what the child reads.
    """
    master, slave = os.openpty()
    try:
        yield master, slave
    finally:
        os.close(master)
        os.close(slave)


def check_backprop_output(out: str) -> None:
    # every layer appears in the forward part and again in the backward part
    for name in LAYERS:
        assert len(re.findall(rf"^---- {name}  \w+\(", out, re.M)) == 2, name
    # every layer (and the loss) has its numerical check, passed, and in the summary table
    for name in ["loss"] + LAYERS:
        m = re.search(rf"^  check {name}: worst rel err (\S+) -> ok$", out, re.M)
        assert m, f"no passing check line for {name}"
        row = re.search(rf"^  {name}\s+(full|random)\s+(\S+)\s+ok$", out, re.M)
        assert row, f"{name} missing from the summary"
        assert float(row.group(2)) < 1e-6
        assert float(m.group(1)) == pytest.approx(float(row.group(2)), rel=0.1)
    assert "FAILED" not in out and "MISMATCH" not in out
    assert "All 13 checks passed" in out
    # the max-pool checks say which inputs sat on a tie and were left out
    assert len(re.findall(r"inputs left out of the check: they are the pixels of the",
                          out)) == 2


def test_backprop_step_by_step_runs_and_every_layer_checks_out(terminal):
    master, slave = terminal
    # stdin is a terminal and nothing is ever typed: if --no-pause read stdin, the run
    # would hang until the timeout
    result = run([BACKPROP, "--no-pause"], stdin=slave, timeout=240)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "MNIST test image 0, labelled 7" in out
    assert "untrained (random weights, seed 0)" in out
    check_backprop_output(out)


def test_backprop_step_by_step_pauses_between_layers_in_a_terminal(terminal):
    master, slave = terminal
    os.write(master, b"\nq\n")          # Enter (start the forward pass), then quit
    result = run([BACKPROP], stdin=slave, timeout=240)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "PART 1" in out
    assert re.search(r"^---- conv1  Conv2d", out, re.M)      # the first layer was shown
    assert not re.search(r"^---- act1  ReLU", out, re.M)     # and it stopped there
    assert "[Enter:" in out


def test_backprop_step_by_step_runs_straight_through_without_a_terminal():
    result = run([BACKPROP], stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert "[Enter:" not in result.stdout
    check_backprop_output(result.stdout)


def test_backprop_step_by_step_with_a_checkpoint(tmp_path):
    path = tmp_path / "ckpt.npz"
    npnet.save({"model": npnet.lenet5(rng=np.random.default_rng(5)).state_dict()}, path)
    result = run([BACKPROP, "--no-pause", "--checkpoint", path, "--index", "1"])
    assert result.returncode == 0, result.stderr
    assert f"trained weights from {path}" in result.stdout
    assert "MNIST test image 1, labelled 2" in result.stdout
    check_backprop_output(result.stdout)


def assert_pngs(directory: Path):
    from PIL import Image
    assert sorted(p.name for p in directory.iterdir()) == sorted(PNGS), \
        "exactly the five PNGs, no temporary files left behind"
    for name in PNGS:
        with Image.open(directory / name) as im:
            im.verify()
            assert im.format == "PNG"
            assert min(im.size) >= 150, f"{name} is {im.size}"


def test_visualize_without_a_checkpoint(tmp_path):
    out = tmp_path / "pictures"
    result = run([VISUALIZE, "--out", out])
    assert result.returncode == 0, result.stderr
    assert "No checkpoint given: using an untrained LeNet-5" in result.stdout
    assert_pngs(out)
    for name in PNGS:
        assert f"wrote {out / name}" in result.stdout


def test_visualize_with_a_checkpoint(tmp_path):
    path = tmp_path / "best.npz"
    npnet.save({"model": npnet.lenet5().state_dict(), "args": {"dataset": "mnist"}}, path)
    result = run([VISUALIZE, "--checkpoint", path])      # the PNGs go next to it
    assert result.returncode == 0, result.stderr
    assert f"Loaded {path}" in result.stdout
    assert "untrained" not in result.stdout
    path.unlink()
    assert_pngs(tmp_path)


def test_visualize_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.npz"
    npnet.save({"weights": np.zeros(3)}, path)
    result = run([VISUALIZE, "--checkpoint", path, "--out", tmp_path / "out"])
    assert result.returncode != 0
    assert "not a checkpoint with a 'model' entry" in result.stderr


# -- the gradcheck options the step-by-step example relies on --------------------------------
def test_gradcheck_with_a_given_upstream_gradient():
    rng = np.random.default_rng(0)
    lin = npnet.Linear(4, 3, dtype=np.float64, rng=rng)
    x, G = rng.standard_normal((2, 4)), rng.standard_normal((2, 3))
    kept = G.copy()
    report = npnet.gradcheck(lin, x, grad_out=G)
    assert [r.name for r in report] == ["input", "weight", "bias"]
    assert all(r.passed and r.rel_err < 1e-8 for r in report)
    np.testing.assert_array_equal(G, kept)                  # the caller's G is untouched

    class Doubled(npnet.Layer):           # correct backward for G, but ignores G's values
        def forward(self, x):
            return 2 * x

        def backward(self, grad_out):
            return np.full_like(grad_out, 2.0)

    x = rng.standard_normal((3,))
    (ok,) = npnet.gradcheck(Doubled(), x, grad_out=np.ones(3))
    assert ok.passed                      # with G = 1 the bug is invisible ...
    (caught,) = npnet.gradcheck(Doubled(), x, grad_out=np.arange(3.0) + 2,
                                raise_on_fail=False)
    assert not caught.passed and caught.rel_err > 0.1       # ... with this G it is not
    with pytest.raises(ValueError, match="grad_out has shape"):
        npnet.gradcheck(lin, rng.standard_normal((2, 4)), grad_out=np.ones((2, 4)))


def test_gradcheck_default_is_unchanged_by_the_grad_out_option():
    rng = np.random.default_rng(0)
    lin = npnet.Linear(4, 3, dtype=np.float64, rng=rng)
    x = rng.standard_normal((2, 4))
    a = npnet.gradcheck(lin, x, rng=np.random.default_rng(1))
    b = npnet.gradcheck(lin, x, rng=np.random.default_rng(1), grad_out=None)
    assert [(r.max_abs_err, r.rel_err) for r in a] == [(r.max_abs_err, r.rel_err) for r in b]
