"""The teaching examples run: examples/backprop_step_by_step.py and examples/visualize.py.

Both use the first MNIST test image (fetched by ``make test``); each runs as a subprocess,
as a reader would run it, on both models: ``--model lenet5`` (the Sequential, the default)
and ``--model seed`` (the seed's torch-style class, whose one ReLU is called four times).
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
# The seed's class, call by call as npnet.hooks.trace names them: one self.relu called four
# times, one self.pool twice; its flatten is x.view, which no hook sees (no record).
SEED_CALLS = ["conv1", "relu", "pool", "conv2", "relu#2", "pool#2", "conv3", "relu#3", "fc1",
              "relu#4", "fc2"]
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


def check_backprop_output(out: str, calls=LAYERS) -> None:
    # every call appears in the forward part and again in the backward part, and nothing else
    headings = re.findall(r"^---- (\S+)  \w+\(", out, re.M)
    assert headings == calls + calls[::-1], headings
    # every call (and the loss) has its numerical check, passed, and in the summary table
    for name in ["loss"] + calls:
        m = re.search(rf"^  check {re.escape(name)}: worst rel err (\S+) -> ok$", out, re.M)
        assert m, f"no passing check line for {name}"
        row = re.search(rf"^  {re.escape(name)}\s+(full|random)\s+(\S+)\s+ok$", out, re.M)
        assert row, f"{name} missing from the summary"
        assert float(row.group(2)) < 1e-6
        assert float(m.group(1)) == pytest.approx(float(row.group(2)), rel=0.1)
    assert "FAILED" not in out and "MISMATCH" not in out
    assert f"All {len(calls) + 1} checks passed" in out
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


def backward_section(out: str, name: str) -> str:
    """The text of ``name``'s step in part 2 (BACKWARD), up to the next heading."""
    part2 = out[out.index("PART 2  BACKWARD"):]
    m = re.search(rf"^---- {re.escape(name)}  \w+\(.*?(?=^----|^SUMMARY)", part2,
                  re.M | re.S)
    assert m, f"no backward step for {name}"
    return m.group(0)


# What each of the four calls of the seed's one ReLU received: each is checked on its own.
SEED_RELU_INPUTS = {"relu": "(1, 6, 28, 28)", "relu#2": "(1, 16, 10, 10)",
                    "relu#3": "(1, 120, 1, 1)", "relu#4": "(1, 84)"}
VIEW_FORWARD = ("  (x.view(1, -1), a recorded call that hooks do not see: (1, 120, 1, 1) -> "
                "(1, 120))")
VIEW_BACKWARD = ("  (x.view(1, -1)'s backward, not hooked: gradient (1, 120) reshaped back to "
                 "(1, 120, 1, 1))")


def test_backprop_step_by_step_on_the_seed_class_checks_every_call(terminal):
    master, slave = terminal
    result = run([BACKPROP, "--no-pause", "--model", "seed"], stdin=slave, timeout=240)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "npnet.models.LeNet5, the seed's torch class" in out
    assert "x = x.view(x.size(0), -1)" in out                   # its forward, as written
    check_backprop_output(out, SEED_CALLS)
    assert "All 12 checks passed: every call's backward agrees" in out
    # the one ReLU shows up as four calls, each said to be one of four, both ways
    assert len(re.findall(r"^---- relu(#[234])?  ReLU\(\)", out, re.M)) == 8
    assert out.count("of 4 of this one ReLU (relu, relu#2, relu#3, relu#4)") == 8
    # ... and each call's check ran on the input that call received, not on another's
    for name, shape in SEED_RELU_INPUTS.items():
        step = backward_section(out, name)
        assert re.search(rf"^    dL/dx  {re.escape(shape)} +rel err \S+  ok$", step, re.M), \
            f"{name} not checked on its own input {shape}:\n{step}"
    # the tie-breaking note appears once per call of the one max-pool
    assert len(re.findall(r"inputs left out of the check: they are the pixels of the",
                          out)) == 2
    # x.view is said where it happens: between relu#3 and fc1 forward, fc1 and relu#3 back
    lines = out.splitlines()
    assert lines.count(VIEW_FORWARD) == 1 and lines.count(VIEW_BACKWARD) == 1
    part2 = out.index("PART 2  BACKWARD")
    assert (out.index("---- relu#3  ReLU") < out.index(VIEW_FORWARD)
            < out.index("---- fc1  Linear") < part2)
    assert (part2 < out.index("  check fc1:") < out.index(VIEW_BACKWARD)
            < out.index("---- relu#3  ReLU", part2))


def test_backprop_step_by_step_seed_class_loads_a_lenet5_checkpoint(tmp_path):
    path = tmp_path / "ckpt.npz"
    npnet.save({"model": npnet.lenet5(rng=np.random.default_rng(5)).state_dict()}, path)
    args = ["--no-pause", "--checkpoint", path, "--index", "1"]
    seed = run([BACKPROP, *args, "--model", "seed"])
    lenet = run([BACKPROP, *args, "--model", "lenet5"])
    assert seed.returncode == 0, seed.stderr
    assert lenet.returncode == 0, lenet.stderr
    assert f"trained weights from {path}" in seed.stdout
    assert "MNIST test image 1, labelled 2" in seed.stdout
    check_backprop_output(seed.stdout, SEED_CALLS)
    # the same weights in the same function: the same logits and loss, digit for digit
    for what in ("logits  z = ", "softmax p = ", "loss = -log p = ", "dL/dz      = "):
        ours = [line for line in seed.stdout.splitlines() if what in line]
        theirs = [line for line in lenet.stdout.splitlines() if what in line]
        assert len(ours) == 1 and ours == theirs, what


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


def test_visualize_seed_class_without_a_checkpoint(tmp_path):
    out = tmp_path / "pictures"
    result = run([VISUALIZE, "--model", "seed", "--out", out])
    assert result.returncode == 0, result.stderr
    assert "No checkpoint given: using an untrained LeNet-5" in result.stdout
    assert "the seed's class npnet.models.LeNet5" in result.stdout
    assert ("One ReLU, called 4 times (relu, relu#2, relu#3, relu#4): the feature maps are "
            "the outputs of relu, relu#2 and relu#3.") in result.stdout
    assert_pngs(out)
    for name in PNGS:
        assert f"wrote {out / name}" in result.stdout


def test_visualize_seed_class_draws_the_same_pictures_as_lenet5(tmp_path):
    from PIL import Image
    path = tmp_path / "best.npz"
    npnet.save({"model": npnet.lenet5(rng=np.random.default_rng(3)).state_dict(),
                "args": {"dataset": "mnist"}}, path)
    stdout = {}
    for model in ("seed", "lenet5"):
        result = run([VISUALIZE, "--model", model, "--checkpoint", path,
                      "--out", tmp_path / model])
        assert result.returncode == 0, result.stderr
        assert_pngs(tmp_path / model)
        stdout[model] = result.stdout
    assert f"Loaded {path} (mnist) into the seed's class npnet.models.LeNet5." in stdout["seed"]
    assert f"Loaded {path} (mnist).\n" in stdout["lenet5"]          # as before --model
    # Same weights, same layers in the same order, float32 both: the same numbers, so the
    # same pixels.  A feature map read from the wrong call (relu#2 for relu#3) would differ.
    for name in PNGS:
        with Image.open(tmp_path / "seed" / name) as a, \
                Image.open(tmp_path / "lenet5" / name) as b:
            assert a.size == b.size, name
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


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
