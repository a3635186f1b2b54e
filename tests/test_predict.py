"""examples/predict.py: digits of any size and either polarity, brought to MNIST's form."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
from PIL import Image

import npnet

@pytest.fixture(scope="module")
def predict(load_example):
    return load_example("predict")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, load_example):
    """A LeNet-5 trained for one epoch on 5,000 images (about 93% test accuracy)."""
    out = tmp_path_factory.mktemp("run")
    train = load_example("train_lenet")
    assert train.main(["--limit", "5000", "--epochs", "1", "--out", str(out),
                       "--no-plots", "--no-progress"]) == 0
    return out / "best.npz"


def test_to_mnist_keeps_mnist_digits_as_the_model_knows_them(predict, checkpoint):
    """Re-preprocessing MNIST's own digits (crop, scale to 20 px, centre of mass at the
    centre) must not cost the model accuracy: they are already in that form."""
    images, labels = npnet.data.load_mnist(split="test")
    model = npnet.lenet5()
    model.load_state_dict(npnet.load(checkpoint)["model"])
    model.eval()

    def accuracy(digits):
        x = npnet.data.normalize(np.stack(digits), npnet.data.MNIST_MEAN,
                                 npnet.data.MNIST_STD)
        return np.mean(model(x).argmax(axis=1) == labels[:500])
    again = [predict.to_mnist(images[i] / 255.0) for i in range(500)]
    assert again[0].shape == (28, 28) and again[0].dtype == np.uint8
    # 500 digits: one point is 5 digits, about the noise of resampling
    assert accuracy(again) >= accuracy(images[:500]) - 0.01


@pytest.mark.parametrize("form", ["png_dark_on_light_large", "png_light_on_dark",
                                  "npy_float_small", "npy_uint8_rgb"])
def test_predicts_digits_in_other_forms(predict, checkpoint, tmp_path, capsys, form):
    images, labels = npnet.data.load_mnist(split="test")
    n = 100
    paths = []
    for i in range(n):
        img = images[i]
        if form == "png_dark_on_light_large":
            path = tmp_path / f"{i}.png"
            big = Image.fromarray(255 - img).resize((84, 84), Image.BILINEAR)
            canvas = Image.new("L", (120, 100), 255)        # white paper, digit off-centre
            canvas.paste(big, (30, 8))
            canvas.save(path)
        elif form == "png_light_on_dark":
            path = tmp_path / f"{i}.png"
            canvas = np.zeros((60, 60), np.uint8)
            canvas[5:33, 20:48] = img                       # off-centre, on a big frame
            Image.fromarray(canvas).save(path)
        elif form == "npy_float_small":
            path = tmp_path / f"{i}.npy"
            np.save(path, np.asarray(Image.fromarray(img).resize((20, 20))) / 255.0)
        else:
            path = tmp_path / f"{i}.npy"
            np.save(path, np.repeat(255 - img[:, :, None], 3, axis=2))
        paths.append(str(path))
    assert predict.main(["--checkpoint", str(checkpoint), *paths]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if not l.startswith("  ")]
    predicted = np.array([int(l.split(": ")[1].split()[0]) for l in lines])
    assert len(predicted) == n
    model = npnet.lenet5()
    model.load_state_dict(npnet.load(checkpoint)["model"])
    raw = model.eval()(npnet.data.normalize(images[:n], npnet.data.MNIST_MEAN,
                                            npnet.data.MNIST_STD)).argmax(axis=1)
    # brought back to MNIST's form, the digits score as the originals do, give or take
    # what resampling changes (5 digits in 100)
    assert np.mean(predicted == labels[:n]) >= np.mean(raw == labels[:n]) - 0.05


def test_unreadable_and_blank_images_are_reported(predict, checkpoint, tmp_path, capsys):
    blank = tmp_path / "blank.npy"
    np.save(blank, np.zeros((30, 30)))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    assert predict.main(["--checkpoint", str(checkpoint), str(blank), str(junk)]) == 1
    err = capsys.readouterr().err
    assert "blank.npy: cannot read: the image is blank" in err
    assert "junk.png: cannot read" in err


@pytest.mark.parametrize("form", ["png_16bit", "png_rgba_transparent", "npy_hw1",
                                  "npy_chw"])
def test_reads_16bit_transparent_and_channel_arrays(predict, form, tmp_path):
    """Every form holds the same dark-on-light or light-on-dark digit and must come out as
    the same MNIST-form picture as its plain 8-bit version."""
    images, _ = npnet.data.load_mnist(split="test")
    digit = images[0]
    expected = predict.to_mnist(digit / 255.0)
    if form == "png_16bit":
        path = tmp_path / "d.png"
        Image.fromarray((255 - digit).astype(np.uint16) * 257).save(path)   # I;16
    elif form == "png_rgba_transparent":
        path = tmp_path / "d.png"
        rgba = np.zeros((28, 28, 4), np.uint8)      # black ink, transparent paper
        rgba[..., 3] = digit
        Image.fromarray(rgba, "RGBA").save(path)
    elif form == "npy_hw1":
        path = tmp_path / "d.npy"
        np.save(path, digit[:, :, None])
    else:
        path = tmp_path / "d.npy"
        np.save(path, np.repeat(digit[None], 3, axis=0))
    got = predict.to_mnist(predict.load_image(path))
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 2


def test_fashion_checkpoints_get_fashion_form_and_class_names(predict, tmp_path, capsys):
    ckpt = tmp_path / "fashion.npz"
    npnet.save({"model": npnet.lenet5(rng=np.random.default_rng(0)).state_dict(),
                "args": {"dataset": "fashion-mnist"}}, ckpt)
    img = tmp_path / "shirt.npy"
    np.save(img, np.full((40, 30), 200, np.uint8))
    assert predict.main(["--checkpoint", str(ckpt), str(img)]) == 0
    out = capsys.readouterr().out
    assert any(name in out.splitlines()[0] for name in npnet.data.FASHION_MNIST_CLASSES)


def test_a_bad_checkpoint_is_a_one_line_error(predict, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_text("nope")
    img = tmp_path / "d.npy"
    np.save(img, np.eye(10))
    assert predict.main(["--checkpoint", str(bad), str(img)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.npz" in err and "Traceback" not in err


def test_a_shifted_digit_does_not_wrap_around(predict):
    """Centring moves ink with zero fill: ink at the top never reappears at the bottom."""
    img = np.zeros((40, 40))
    img[0:4, 0:40] = 1.0                  # a heavy bar at the top...
    img[4:40, 19:21] = 1.0                # ...on a thin stem: the mass sits high
    out = predict.to_mnist(img)
    rows = np.flatnonzero(out.max(axis=1) > 0)
    assert np.all(np.diff(rows) == 1)     # one contiguous band of rows: nothing wrapped


# -- issue 13: every file its own answer; hostile pictures and arrays -----------------------
@pytest.fixture
def untrained(tmp_path):
    path = tmp_path / "untrained.npz"
    npnet.save({"model": npnet.lenet5(rng=np.random.default_rng(0)).state_dict()}, path)
    return path


def _hostile_files(tmp_path, monkeypatch):
    """name -> (path, what its error must say); and Pillow's limit lowered to 1,000
    pixels for the bomb (the mechanism is Pillow's, the size only makes the test fast)."""
    from PIL import Image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    files = {}
    bomb = tmp_path / "bomb.png"                     # 2 x the limit and more: Pillow's error
    Image.new("L", (60, 60), 255).save(bomb)
    files["bomb"] = (bomb, "exceeds limit of 2000 pixels")
    warned = tmp_path / "warned.png"                 # between 1x and 2x: Pillow only warns
    Image.new("L", (40, 40), 255).save(warned)
    files["warned"] = (warned, "exceeds limit of 1000 pixels")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    files["junk"] = (junk, "not an image file Pillow can read")
    structured = tmp_path / "structured.npy"
    np.save(structured, np.zeros((28, 28), dtype=[("a", "u1"), ("b", "f4")]))
    files["structured"] = (structured, "expected plain numbers")
    huge = tmp_path / "huge.npy"                     # a header for 10^12 values, 100 bytes
    header = b"{'descr': '|u1', 'fortran_order': False, 'shape': (1000000, 1000000), }"
    huge.write_bytes(b"\x93NUMPY\x01\x00" + (118).to_bytes(2, "little")
                     + header.ljust(117) + b"\n" + bytes(100))
    files["huge"] = (huge, r"shape \(1000000, 1000000\) \(1000000000000 values\), more than")
    liar = tmp_path / "liar.npy"                     # a small shape, too few bytes
    liar.write_bytes(huge.read_bytes().replace(b"(1000000, 1000000)", b"(30, 30)          "))
    files["liar"] = (liar, r"declares \(30, 30\) uint8 \(900 bytes\), the file has 100")
    long_header = tmp_path / "long.npy"
    long_header.write_bytes(b"\x93NUMPY\x02\x00" + (200_000).to_bytes(4, "little")
                            + b" " * 200_000)
    files["long-header"] = (long_header, "Header info length")
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    files["fifo"] = (fifo, "a FIFO, not a regular image file")
    files["directory"] = (tmp_path, "a directory")
    return files


def test_each_file_gets_its_own_answer_or_its_own_error(predict, untrained, tmp_path,
                                                        capsys, monkeypatch):
    hostile = _hostile_files(tmp_path, monkeypatch)
    good = tmp_path / "good.npy"
    np.save(good, np.eye(20))
    paths = [good, *(p for p, _ in hostile.values()), good]
    assert predict.main(["--checkpoint", str(untrained), *map(str, paths)]) == 1
    captured = capsys.readouterr()
    answers = [line for line in captured.out.splitlines() if not line.startswith("  ")]
    assert len(answers) == 2 and all(a.startswith(f"{good}: ") for a in answers)
    errors = captured.err.splitlines()
    assert len(errors) == len(hostile), captured.err        # one line each, in order
    for line, (name, (path, match)) in zip(errors, hostile.items()):
        assert line.startswith(f"{path}: cannot read: "), (name, line)
        assert re.search(match, line), (name, line)


def test_exif_orientation_is_honoured(predict, tmp_path):
    """A phone stores the sensor's pixels and an EXIF tag saying how to turn them: the
    digit must be read upright, as a viewer shows it."""
    images, _ = npnet.data.load_mnist(split="test")
    upright = Image.fromarray(255 - images[0])
    upright.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6                        # Orientation: rotate 90 degrees clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.png", exif=exif)
    expected = predict.load_image(tmp_path / "upright.png")
    assert np.array_equal(predict.load_image(tmp_path / "phone.png"), expected)
    assert not np.array_equal(np.rot90(expected), expected)   # the turn would show


def test_non_finite_outputs_are_an_error(predict, tmp_path, capsys):
    """Finite weights that overflow float32 on an image: no confident 'p=nan'."""
    state = npnet.lenet5(rng=np.random.default_rng(0)).state_dict()
    path = tmp_path / "overflowing.npz"
    npnet.save({"model": {k: v * np.float32(1e20) for k, v in state.items()}}, path)
    image = tmp_path / "d.npy"
    np.save(image, np.eye(20))
    assert predict.main(["--checkpoint", str(path), str(image)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"{image}: error: the model's output is not finite")
    assert captured.err.count("\n") == 1


def test_a_safetensors_export_predicts_as_its_checkpoint(predict, checkpoint, tmp_path,
                                                         capsys):
    weights = tmp_path / "model.safetensors"
    npnet.save_weights(npnet.load(checkpoint)["model"], weights,
                       metadata={"model": "lenet5", "dataset": "mnist"})
    image = tmp_path / "d.npy"
    np.save(image, npnet.data.load_mnist(split="test")[0][0])
    outputs = []
    for path in (checkpoint, weights):
        assert predict.main(["--checkpoint", str(path), str(image)]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
