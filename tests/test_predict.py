"""examples/predict.py: digits of any size and either polarity, brought to MNIST's form."""
from __future__ import annotations

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
