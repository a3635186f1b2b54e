"""Classify digit images with a trained LeNet-5 checkpoint.

    python examples/predict.py --checkpoint runs/lenet5/best.npz digit.png other.npy

Each image may be a PNG (or any format Pillow reads: 8- or 16-bit, grey or colour, with or
without transparency) or a .npy array ((H, W), (H, W, C) or (C, H, W)), of any size, dark
ink on a light background or light on dark.  It is brought to MNIST's form first, as the
MNIST images themselves were made: grey levels, ink bright on black, cropped to the ink,
scaled so its longer side is 20 pixels, and centred by its centre of mass in a 28x28 frame.
A Fashion-MNIST checkpoint gets Fashion-MNIST's form instead: the whole picture scaled to
28x28, light on black; its classes are printed by name.

Every file gets its own line: a prediction, or `<file>: cannot read: <why>` on stderr; the
others are still classified, and the exit code is 1 if any failed (2: a bad checkpoint).
Files are input from anywhere, so each is bounded before it is decoded: a picture may have
at most Pillow's decompression-bomb limit of pixels (`PIL.Image.MAX_IMAGE_PIXELS`, checked
as an error), a .npy array as many, of plain numbers, with exactly the bytes its header
declares.  A photo's EXIF orientation is applied, so a phone's picture is read upright.
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings

import numpy as np

try:
    import npnet
except ValueError as e:                 # e.g. a bad NPNET_NUM_THREADS: one line, not a trace
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
from npnet import data as npdata
from npnet.checkpoint import load_model
from npnet.io import open_regular, read_npy_header


def max_pixels():
    """Pillow's decompression-bomb limit, the one bound for pictures and arrays alike."""
    from PIL import Image
    return Image.MAX_IMAGE_PIXELS or 2**62


def load_image(path):
    """-> float grey levels in [0, 1], (H, W)."""
    if str(path).endswith(".npy"):
        img = _read_npy(path)
        if img.ndim == 3 and img.shape[0] in (1, 3, 4) and img.shape[-1] not in (1, 3, 4):
            img = np.moveaxis(img, 0, -1)              # (C, H, W) -> (H, W, C)
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        if img.ndim == 3 and img.shape[-1] in (3, 4):  # an RGB(A) array: average the colours
            img = img[..., :3].mean(axis=-1)
        scale = 255.0 if img.dtype == np.uint8 or (img.size and np.nanmax(img) > 1) else 1.0
    else:
        img, scale = _read_picture(path)
    if img.ndim != 2 or min(img.shape) < 1:
        raise ValueError(f"expected a 2-D grey image, got shape {img.shape}")
    img = img.astype(np.float64)
    if not np.all(np.isfinite(img)):
        raise ValueError("the image holds nan or inf")
    return np.clip(img / scale, 0.0, 1.0)


def _read_npy(path):
    """A .npy array, its header checked before any data is read: plain numbers (no
    structured or object dtype), at most ``max_pixels()`` values, and exactly the bytes
    the header declares (so a tiny file cannot ask for a huge array)."""
    with open_regular(path, ".npy file") as f:
        size = f.seek(0, 2)
        f.seek(0)
        shape, fortran, dtype = read_npy_header(f)      # ValueError when not a .npy
        if dtype.names is not None or dtype.kind not in "buif":
            raise ValueError(f"a .npy of {dtype} values; expected plain numbers")
        count = math.prod(shape)
        if count > max_pixels():
            raise ValueError(f"a .npy of shape {shape} ({count} values), more than the "
                             f"{max_pixels()}-pixel limit")
        if size - f.tell() != count * dtype.itemsize:
            raise ValueError(f"the .npy header declares {shape} {dtype} "
                             f"({count * dtype.itemsize} bytes), the file has "
                             f"{size - f.tell()}")
        f.seek(0)
        return np.lib.format.read_array(f, allow_pickle=False)


def _read_picture(path):
    """A PNG/JPEG/... as grey levels and the value of white: 8- and 16-bit, with or
    without alpha (transparent pixels count as white paper), upright as its EXIF
    orientation says.  Pillow's decompression-bomb check runs on the header, before
    decoding; its warning (more than MAX_IMAGE_PIXELS) is made an error here."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    with open_regular(path, "image file") as f, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(f)
        except UnidentifiedImageError:
            raise ValueError("not an image file Pillow can read") from None
        im = ImageOps.exif_transpose(im)     # decodes; a rotated copy if EXIF says so
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):       # 16-bit or float grey
            img = np.asarray(im, dtype=np.float64)
            white = 65535.0 if im.mode.startswith("I;16") else max(float(img.max()), 1.0)
            return img, white
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            paper = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(paper, im.convert("RGBA"))
        return np.asarray(im.convert("L"), dtype=np.float64), 255.0


# What reading a hostile or broken file may raise: OSError (Pillow's "cannot identify
# image file" among them), ValueError (numpy's .npy checks and ours), Pillow's bomb
# error and warning-made-error, and what a corrupt stream makes a decoder raise.
def _unreadable():
    from PIL import Image
    return (ValueError, OSError, EOFError, SyntaxError, IndexError, TypeError,
            MemoryError, Image.DecompressionBombError, Image.DecompressionBombWarning)


def to_mnist(img):
    """(H, W) grey levels in [0, 1] -> (28, 28) uint8 in MNIST's form."""
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    if np.median(border) > 0.5:                        # light background: make the ink bright
        img, border = 1.0 - img, 1.0 - border
    img = np.clip(img - np.median(border), 0.0, None)  # the background becomes 0
    if img.max() <= 0:
        raise ValueError("the image is blank: no ink found")
    img = img / img.max()
    rows, cols = np.flatnonzero(img.max(axis=1) > 0.1), np.flatnonzero(img.max(axis=0) > 0.1)
    img = img[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]          # crop to the ink
    from PIL import Image
    h, w = img.shape
    scale = 20.0 / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = np.asarray(Image.fromarray((img * 255).astype(np.uint8)).resize(
        (nw, nh), Image.LANCZOS), dtype=np.float64)
    frame = np.zeros((28, 28))
    top, left = (28 - nh) // 2, (28 - nw) // 2
    frame[top:top + nh, left:left + nw] = small
    # shift the centre of mass to pixel (14, 14), where MNIST's digits have it (measured:
    # re-centring MNIST's own test digits there leaves a model's accuracy unchanged, while
    # (13.5, 13.5) costs it 3 points)
    total = frame.sum()
    cy = (frame.sum(axis=1) @ np.arange(28)) / total
    cx = (frame.sum(axis=0) @ np.arange(28)) / total
    dy, dx = int(round(14 - cy)), int(round(14 - cx))
    return np.clip(_shift(frame, dy, dx), 0, 255).astype(np.uint8)


def _shift(img, dy, dx):
    """Move img by (dy, dx) pixels, filling with 0 (np.roll would wrap ink around)."""
    out = np.zeros_like(img)
    h, w = img.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        img[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def to_fashion_mnist(img):
    """(H, W) grey levels in [0, 1] -> (28, 28) uint8: a light garment on black, the whole
    picture scaled into the frame (Fashion-MNIST's images are not cropped or centred)."""
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    if np.median(border) > 0.5:                        # light background: make it black
        img = 1.0 - img
    from PIL import Image
    small = Image.fromarray((img * 255).astype(np.uint8)).resize((28, 28), Image.LANCZOS)
    return np.asarray(small, dtype=np.uint8)


def _one_line(err) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, (ValueError, OSError)) else f"{type(err).__name__}: {text}"


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a checkpoint of train_lenet.py")
    p.add_argument("images", nargs="+", help="PNG files or .npy arrays of digits")
    args = p.parse_args(argv)

    try:
        model, settings = load_model(args.checkpoint)   # every field checked
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dataset = settings["dataset"]
    mean, std = npdata.NORMALIZATION[dataset]
    names = npdata.CLASSES[dataset]
    prepare = to_fashion_mnist if dataset == "fashion-mnist" else to_mnist

    status = 0
    for path in args.images:
        try:
            picture = prepare(load_image(path))
        except _unreadable() as e:
            print(f"{path}: cannot read: {_one_line(e)}", file=sys.stderr)
            status = 1
            continue
        x = npdata.normalize(picture[None], mean, std)    # (1, 1, 28, 28)
        with np.errstate(over="ignore", invalid="ignore"):     # checked just below
            logits = model(x).astype(np.float64)
        if not np.all(np.isfinite(logits)):
            print(f"{path}: error: the model's output is not finite ({logits[0]}): its "
                  "weights overflow on this image", file=sys.stderr)
            status = 1
            continue
        probs = softmax(logits)[0]
        top = int(probs.argmax())
        ranked = "  ".join(f"{names[k]}:{probs[k]:.3f}" for k in np.argsort(-probs)[:3])
        print(f"{path}: {names[top]}  (p={probs[top]:.3f}; top 3 {ranked})")
        print("  " + " ".join(f"{names[k]}:{probs[k]:.3f}" for k in range(10)))
    return status


if __name__ == "__main__":
    sys.exit(main())
