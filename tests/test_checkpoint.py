"""The main job's guards: checkpoints checked as strictly as flags (npnet/checkpoint.py, on
--resume and in predict.py), every flag range-checked, one live run per output folder,
the final report from the run's own best weights, an unwritable --out refused before
training -- and a refused command leaves nothing behind."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import npnet
from npnet.io import lock_exclusive

from test_train_lenet import SMOKE, fresh_checkpoint  # tests/ is on sys.path under pytest

TINY = ["--limit", "100", "--eval-limit", "100", "--epochs", "1", "--batch-size", "50",
        *SMOKE]


@pytest.fixture(scope="module")
def train(load_example):
    return load_example("train_lenet")


@pytest.fixture(scope="module")
def predict(load_example):
    return load_example("predict")


def edit(ckpt, dotted, value):
    """A copy of ``ckpt`` with the field at ``dotted`` (e.g. 'args.lr') set to ``value``."""
    ckpt = {**ckpt, "args": dict(ckpt["args"]), "history": dict(ckpt["history"]),
            "model": dict(ckpt["model"])}
    top, _, key = dotted.partition(".")               # 'model.conv1.bias': one key
    if key:
        ckpt[top] = {**ckpt[top], key: value}
    else:
        ckpt[top] = value
    return ckpt


# Each a field of a checkpoint set to a value the command line would refuse, and what the
# error must say.  A history of one epoch makes 'epoch' 1 consistent.
BAD_FIELDS = {
    "lr-str": ("args.lr", "0.05", r"setting 'lr' must be a finite number > 0, got '0.05'"),
    "lr-negative": ("args.lr", -1.0, "setting 'lr' must be a finite number > 0"),
    "batch-zero": ("args.batch_size", 0, "setting 'batch_size' must be an int from 1"),
    "batch-float": ("args.batch_size", 64.0, "setting 'batch_size' must be an int"),
    "epochs-bool": ("args.epochs", True, "setting 'epochs' must be an int"),
    "model-unknown": ("args.model", "vgg16", "setting 'model' must be one of lenet5"),
    "dataset-unknown": ("args.dataset", "cifar10", "setting 'dataset' must be one of mnist"),
    "momentum-1": ("args.momentum", 1.0, r"setting 'momentum' must be a number in \[0, 1\)"),
    "flip-int": ("args.flip", 1, "setting 'flip' must be yes or no"),
    "shift-huge": ("args.shift", 10**6, "setting 'shift' must be an int from 0 to 27"),
    "seed-negative": ("args.seed", -5, "setting 'seed' must be an int from 0"),
    "unknown-setting": ("args.colour", "red", "unknown setting 'colour'"),
    "epoch-past-end": ("epoch", 99, "'epoch' must be an int from 0 to the run's 15"),
    "epoch-vs-history": ("epoch", 1, r"'history.epoch' must be a list of 1 values"),
    "best-val": ("best_val", 0.5, "'best_val' must be the best of 'history.val_accuracy'"),
    "rng": ("rng", {"bit_generator": "MT19937", "state": {}}, "'rng' is not the state of"),
    "history-length": ("history.train_loss", [0.5], r"'history.train_loss' must be a list "
                       "of 0 values"),
    "weights-nan": ("model.conv1.bias", np.full(6, np.nan, np.float32),
                    r"'model.conv1.bias' holds nan or inf"),
    "weights-object": ("model", [1, 2], "'model' must be a dict of arrays"),
    "optimizer-lr": ("optimizer.lr", -0.1, "lr"),
    "format": ("format", "something", "not a checkpoint written by train_lenet.py"),
}


@pytest.mark.parametrize("name", list(BAD_FIELDS))
def test_a_bad_checkpoint_field_is_a_one_line_error_and_leaves_nothing(train, tmp_path,
                                                                        capsys, name):
    dotted, value, match = BAD_FIELDS[name]
    ckpt = fresh_checkpoint(train)
    ckpt = edit(ckpt, dotted, value)
    src = tmp_path / "src"
    src.mkdir()
    npnet.save(ckpt, src / "last.npz")
    npnet.save(fresh_checkpoint(train), src / "best.npz")
    out = tmp_path / "new" / "out"
    assert train.main(["--resume", str(src / "last.npz"), "--out", str(out), *SMOKE]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert str(src / "last.npz") in err and re.search(match, err), err
    assert "loading" not in captured.out              # refused before the data is read
    assert not (tmp_path / "new").exists()            # no folder, no file


def test_resume_and_checkpoint_refuse_a_fifo_at_once(train, predict, tmp_path, capsys):
    import signal
    fifo = tmp_path / "last.npz"
    os.mkfifo(fifo)                        # no writer: reading it would wait forever
    signal.alarm(20)                       # a regression fails rather than hangs
    try:
        assert train.main(["--resume", str(fifo), "--out", str(tmp_path / "o"),
                           *SMOKE]) == 2
        assert predict.main(["--checkpoint", str(fifo), str(fifo)]) == 2
    finally:
        signal.alarm(0)
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: cannot read '{fifo}': it is a FIFO, not a regular checkpoint "
                   "file"] * 2
    assert not (tmp_path / "o").exists()


def one_epoch(train):
    """A valid checkpoint after one (pretended) epoch."""
    ckpt = fresh_checkpoint(train)
    history = {"epoch": [1], "train_loss": [0.3], "train_accuracy": [0.9],
               "val_accuracy": [0.95], "lr": [0.05], "seconds": [1.0]}
    return {**ckpt, "epoch": 1, "history": history, "best_val": 0.95}


@pytest.mark.parametrize("key, value, match", [
    ("train_loss", float("nan"), r"'history.train_loss' holds nan; each value must be a "
                                 "finite number >= 0"),
    ("val_accuracy", 1.5, r"'history.val_accuracy' holds 1.5; each value must be a number "
                          r"in \[0, 1\]"),
    ("lr", "0.05", "'history.lr' holds '0.05'"),
    ("epoch", 2, "'history.epoch' must count 1 to 1"),
], ids=["loss-nan", "accuracy-1.5", "lr-str", "epoch-2"])
def test_the_history_is_checked_value_by_value(train, tmp_path, key, value, match):
    path = tmp_path / "last.npz"
    good = one_epoch(train)
    npnet.save(good, path)
    assert npnet.checkpoint.load_checkpoint(path, resume=True)["epoch"] == 1
    npnet.save({**good, "history": {**good["history"], key: [value]}}, path)
    with pytest.raises(ValueError, match=match):
        npnet.checkpoint.load_checkpoint(path, resume=True)


def test_predict_uses_the_same_checks(predict, train, tmp_path, capsys):
    image = tmp_path / "d.npy"
    np.save(image, np.eye(28))
    for dotted, value, match in (BAD_FIELDS["model-unknown"], BAD_FIELDS["weights-nan"],
                                 BAD_FIELDS["dataset-unknown"]):
        path = tmp_path / "ckpt.npz"
        npnet.save(edit(fresh_checkpoint(train), dotted, value), path)
        assert predict.main(["--checkpoint", str(path), str(image)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and str(path) in err
        assert re.search(match, err), err


def test_load_model_gives_an_eval_model_and_its_settings(train, tmp_path):
    path = tmp_path / "best.npz"
    npnet.save(fresh_checkpoint(train, model="resnet", dataset="fashion-mnist"), path)
    model, settings = npnet.checkpoint.load_model(path)
    assert not model.training and settings["model"] == "resnet"
    assert settings["dataset"] == "fashion-mnist"
    with pytest.raises(ValueError, match="best.npz: load_state_dict refused"):
        npnet.save(edit(fresh_checkpoint(train), "args.model", "resnet"), path)
        npnet.checkpoint.load_model(path)


# -- every flag range-checked, and flags the optimizer would ignore refused --------------
@pytest.mark.parametrize("argv, match", [
    (["--epochs", "0"], "--epochs must be an int from 1 to 10000, got 0"),
    (["--batch-size", "100000"], "--batch-size must be an int from 1 to 50000"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (["--momentum", "1.5"], r"--momentum must be a number in \[0, 1\)"),
    (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0"),
    (["--shift", "28"], "--shift must be an int from 0 to 27"),
    (["--seed", "-1"], "--seed must be an int from 0"),
    (["--limit", "0"], "--limit must be an int from 1 to 50000"),
    (["--eval-limit", "10001"], "--eval-limit must be an int from 1 to 10000"),
    (["--stop-after", "0"], "--stop-after must be an int from 1 to 10000, got 0"),
], ids=lambda v: "_".join(v) if isinstance(v, list) else None)
def test_every_flag_is_range_checked(train, tmp_path, capsys, argv, match):
    with pytest.raises(SystemExit) as info:
        train.main([*argv, "--out", str(tmp_path / "o"), *SMOKE])
    assert info.value.code == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_a_flag_without_meaning_for_the_optimizer_is_refused(train, tmp_path, capsys):
    assert train.main(["--optimizer", "adam", "--momentum", "0.5", "--out",
                       str(tmp_path / "o"), *SMOKE]) == 2
    assert "--momentum has no meaning for --optimizer adam" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["a-file", "under-a-file"])
def test_an_unwritable_out_is_refused_before_training(train, tmp_path, capsys, kind):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker if kind == "a-file" else blocker / "run"
    assert train.main(["--out", str(out), *TINY]) == 2
    captured = capsys.readouterr()
    assert f"--out {out}" in captured.err and "loading" not in captured.out
    assert blocker.read_text() == "x"


# -- one output folder, one live run --------------------------------------------------------
HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, str(os.getpid()).encode())
print("locked", flush=True)
time.sleep(120)
"""


def test_a_folder_held_by_a_live_run_is_refused_and_freed_when_it_dies(train, tmp_path,
                                                                       capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out / train.LOCK_NAME)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.perf_counter()
        assert train.main(["--out", str(out), *TINY]) == 2
        captured = capsys.readouterr()
        assert time.perf_counter() - start < 5          # at once, not after training
        assert f"--out {out} is in use by another run (pid {holder.pid})" in captured.err
        assert "loading" not in captured.out
        assert sorted(p.name for p in out.iterdir()) == [train.LOCK_NAME]
    finally:
        holder.kill()                                   # SIGKILL: no clean-up of its own
        holder.wait()
    assert train.main(["--out", str(out), *TINY]) == 0  # the dead run's lock is gone
    assert (out / "metrics.json").exists()


def test_a_run_holds_its_folder_while_it_runs(train, tmp_path, monkeypatch):
    """While a run trains, its folder's lock is taken (another run would be refused)."""
    out = tmp_path / "run"
    seen = []
    real = train.train_epoch

    def spy(*args, **kwargs):
        seen.append(lock_exclusive(out / train.LOCK_NAME, create=False))
        return real(*args, **kwargs)
    monkeypatch.setattr(train, "train_epoch", spy)
    assert train.main(["--out", str(out), *TINY]) == 0
    assert seen == [None]
    fd = lock_exclusive(out / train.LOCK_NAME, create=False)   # released at the end
    assert fd is not None
    os.close(fd)


def test_the_report_comes_from_the_runs_own_best_weights(train, tmp_path, monkeypatch):
    """Another process overwriting best.npz mid-run cannot change what the run reports."""
    out = tmp_path / "run"
    real_save = npnet.save

    def save_then_clobber(obj, path):
        real_save(obj, path)
        if Path(path).name == "best.npz":              # someone else's weights land here
            zeros = {k: np.zeros_like(v) for k, v in obj["model"].items()}
            real_save({**obj, "model": zeros}, path)
    monkeypatch.setattr(train.npnet, "save", save_then_clobber)
    assert train.main(["--out", str(out), "--export-safetensors", *TINY]) == 0
    monkeypatch.undo()
    metrics = json.loads((out / "metrics.json").read_text())
    model = npnet.lenet5()
    model.load_state_dict(npnet.load(out / "last.npz")["model"])   # epoch 1 = the best
    x, y = npnet.data.load_mnist(split="test")
    x = npnet.data.normalize(x[:100], npnet.data.MNIST_MEAN, npnet.data.MNIST_STD)
    own = float(np.mean(model.eval()(x).argmax(axis=1) == y[:100]))
    assert metrics["test_accuracy"] == own
    # and the exported weights are the run's own too, readable by predict's loader
    exported, settings = npnet.checkpoint.load_model(out / "model.safetensors")
    assert settings == {"model": "lenet5", "dataset": "mnist"}
    for key, value in model.state_dict().items():
        assert np.array_equal(exported.state_dict()[key], value), key


def test_a_failed_run_removes_the_folder_it_created(train, tmp_path, capsys):
    out = tmp_path / "a" / "b"
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("x")                        # the data fails after out is claimed
    assert train.main(["--out", str(out), "--data-dir", str(not_a_dir), *TINY]) == 2
    assert "error: " in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_a_bad_thread_count_is_a_one_line_error(tmp_path):
    for script in ("train_lenet.py", "predict.py", "explain.py"):
        r = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "examples" /
                                                script), "--help"],
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "NPNET_NUM_THREADS": "lots"})
        assert r.returncode == 2
        assert r.stderr == ("error: the environment variable NPNET_NUM_THREADS must be a "
                            "positive int such as 2, got 'lots'\n")
