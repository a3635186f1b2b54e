"""Mini-batches (iterate_batches, DataLoader) and normalize."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npnet.data import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    MNIST_MEAN,
    MNIST_STD,
    DataLoader,
    iterate_batches,
    normalize,
    random_shift,
)


def _data(n):
    """x[i] = [i, -i] and y[i] = 10 i, so a batch tells which examples it holds and whether
    pairs stayed together."""
    x = np.stack([np.arange(n), -np.arange(n)], axis=1)  # (N, 2)
    return x, np.arange(n) * 10


def _check_pairs(batches):
    for xb, yb in batches:
        np.testing.assert_array_equal(xb[:, 0] * 10, yb)
        np.testing.assert_array_equal(xb[:, 1], -xb[:, 0])


# -- iterate_batches ---------------------------------------------------------------------------
@pytest.mark.parametrize("n, batch_size", [(10, 3), (10, 5), (10, 1), (10, 10), (10, 64), (1, 4)],
                         ids=lambda v: str(v))
def test_in_order_batches_cover_everything_once(n, batch_size):
    x, y = _data(n)
    batches = list(iterate_batches(x, y, batch_size))
    sizes = [len(xb) for xb, _ in batches]
    full, rest = divmod(n, batch_size)
    assert sizes == [batch_size] * full + ([rest] if rest else [])
    np.testing.assert_array_equal(np.concatenate([xb[:, 0] for xb, _ in batches]), np.arange(n))
    _check_pairs(batches)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 200), batch_size=st.integers(1, 70), shuffle=st.booleans(),
       drop_last=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_each_index_at_most_once_and_all_unless_dropped(n, batch_size, shuffle, drop_last,
                                                         seed):
    x, y = _data(n)
    rng = np.random.default_rng(seed) if shuffle else None
    batches = list(iterate_batches(x, y, batch_size, shuffle, rng, drop_last))
    seen = np.concatenate([xb[:, 0] for xb, _ in batches]) if batches else np.array([], int)
    assert len(np.unique(seen)) == len(seen)  # no example twice
    expected = n - n % batch_size if drop_last else n
    assert len(seen) == expected
    assert all(1 <= len(xb) <= batch_size for xb, _ in batches)
    if drop_last:
        assert all(len(xb) == batch_size for xb, _ in batches)
    _check_pairs(batches)


def test_shuffle_is_fixed_by_the_generator():
    x, y = _data(100)

    def order(seed):
        batches = iterate_batches(x, y, 16, shuffle=True, rng=np.random.default_rng(seed))
        return np.concatenate([xb[:, 0] for xb, _ in batches])

    np.testing.assert_array_equal(order(0), order(0))
    assert not np.array_equal(order(0), order(1))
    assert not np.array_equal(order(0), np.arange(100))  # it did shuffle
    np.testing.assert_array_equal(np.sort(order(0)), np.arange(100))
    # The documented order: rng.permutation(N).
    np.testing.assert_array_equal(order(3), np.random.default_rng(3).permutation(100))


def test_drop_last_leaves_out_the_short_batch():
    x, y = _data(10)
    batches = list(iterate_batches(x, y, 4, drop_last=True))
    assert [len(xb) for xb, _ in batches] == [4, 4]
    np.testing.assert_array_equal(np.concatenate([xb[:, 0] for xb, _ in batches]), np.arange(8))
    assert list(iterate_batches(x, y, 11, drop_last=True)) == []


def test_unshuffled_batches_are_views():
    x, y = _data(10)
    xb, _ = next(iterate_batches(x, y, 4))
    assert np.shares_memory(xb, x)


@pytest.mark.parametrize("kwargs, words", [
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=-3), "batch_size"),
    (dict(batch_size=2.5), "batch_size"),
    (dict(batch_size=4, shuffle=True), "rng"),
    (dict(batch_size=4, shuffle=True, rng=np.random.RandomState(0)), "Generator"),
], ids=["zero", "negative", "float", "shuffle_no_rng", "legacy_random_state"])
def test_errors_are_raised_at_the_call(kwargs, words):
    x, y = _data(10)
    with pytest.raises(ValueError, match=words):
        iterate_batches(x, y, **kwargs)  # not even one next(): the call itself fails
    with pytest.raises(ValueError, match=words):
        DataLoader(x, y, **kwargs)


def test_length_mismatch():
    x, _ = _data(10)
    with pytest.raises(ValueError, match="10 and 9"):
        iterate_batches(x, np.zeros(9), 4)


# -- DataLoader --------------------------------------------------------------------------------
@pytest.mark.parametrize("n, batch_size, drop_last, expected", [
    (10, 3, False, 4), (10, 3, True, 3), (9, 3, False, 3), (9, 3, True, 3), (2, 5, True, 0),
])
def test_loader_len_is_number_of_batches(n, batch_size, drop_last, expected):
    x, y = _data(n)
    loader = DataLoader(x, y, batch_size, drop_last=drop_last)
    assert len(loader) == expected
    assert len(list(loader)) == expected


def test_loader_epochs_differ_but_the_run_is_seeded():
    x, y = _data(50)

    def run(seed):
        loader = DataLoader(x, y, 8, shuffle=True, rng=np.random.default_rng(seed))
        return [np.concatenate([xb[:, 0] for xb, _ in loader]) for _ in range(3)]

    first, again = run(0), run(0)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])  # a new permutation each epoch
    for epoch in first:
        np.testing.assert_array_equal(np.sort(epoch), np.arange(50))


# -- normalize ---------------------------------------------------------------------------------
def test_constants():
    assert (MNIST_MEAN, MNIST_STD) == (0.1307, 0.3081)
    assert (FASHION_MNIST_MEAN, FASHION_MNIST_STD) == (0.2860, 0.3530)


def test_normalize_values_shape_and_dtype():
    images = np.array([[[0, 255], [51, 128]]], dtype=np.uint8)  # (1, 2, 2)
    out = normalize(images, MNIST_MEAN, MNIST_STD)
    assert out.shape == (1, 1, 2, 2) and out.dtype == np.float32
    expected = [[(0 - 0.1307) / 0.3081, (1 - 0.1307) / 0.3081],
                [(0.2 - 0.1307) / 0.3081, (128 / 255 - 0.1307) / 0.3081]]
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-6)


def test_normalize_accepts_nchw_and_float64():
    images = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 1, 28, 28).astype(np.uint8)
    out = normalize(images, 0.5, 0.25, dtype=np.float64)
    assert out.shape == (2, 1, 28, 28) and out.dtype == np.float64
    np.testing.assert_array_equal(out, (images / 255 - 0.5) / 0.25)
    assert images.dtype == np.uint8  # the input is left alone


def test_normalize_pads_with_background():
    images = np.full((3, 28, 28), 255, dtype=np.uint8)
    out = normalize(images, MNIST_MEAN, MNIST_STD, pad_to=32)
    assert out.shape == (3, 1, 32, 32) and out.dtype == np.float32
    background, ink = -MNIST_MEAN / MNIST_STD, (1 - MNIST_MEAN) / MNIST_STD
    inside = np.zeros((32, 32), dtype=bool)
    inside[2:30, 2:30] = True  # centred: 2 pixels each side
    np.testing.assert_allclose(out[:, 0][:, inside], ink, rtol=1e-6)
    np.testing.assert_allclose(out[:, 0][:, ~inside], background, rtol=1e-6)
    odd = normalize(np.full((1, 3, 3), 255, np.uint8), 0.0, 1.0, pad_to=6)
    np.testing.assert_array_equal(odd[0, 0, :, 0], [0, 0, 0, 0, 0, 0])  # 1 left, 2 right
    np.testing.assert_array_equal(odd[0, 0, 1, :], [0, 1, 1, 1, 0, 0])


@pytest.mark.parametrize("images, kwargs, words", [
    (np.zeros((2, 28, 28), np.float32), {}, "uint8"),
    (np.zeros((28, 28), np.uint8), {}, "shape"),
    (np.zeros((2, 3, 28, 28), np.uint8), {}, "shape"),
    (np.zeros((2, 28, 28), np.uint8), dict(pad_to=27), "pad_to"),
    (np.zeros((2, 28, 28), np.uint8), dict(std=0.0), "std"),
], ids=["float_input", "2d", "3_channels", "pad_too_small", "zero_std"])
def test_normalize_errors(images, kwargs, words):
    args = dict(mean=MNIST_MEAN, std=MNIST_STD) | kwargs
    with pytest.raises(ValueError, match=words):
        normalize(images, **args)


# -- random_shift ----------------------------------------------------------------------------
def _shift_of(original, shifted, s, fill):
    """The (dy, dx) that turns original into shifted, or None."""
    _, h, w = original.shape
    padded = np.pad(original, ((0, 0), (s, s), (s, s)), constant_values=fill)
    hits = [(dy, dx) for dy in range(2 * s + 1) for dx in range(2 * s + 1)
            if np.array_equal(padded[:, dy:dy + h, dx:dx + w], shifted)]
    return hits[0] if hits else None


def test_random_shift_translates_each_image_within_the_bound():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 2, 6, 7)).astype(np.float32)   # distinct values
    y = random_shift(x, 2, np.random.default_rng(0), fill=-9.0)
    assert y.shape == x.shape and y.dtype == np.float32 and y.flags.c_contiguous
    shifts = [_shift_of(x[i], y[i], 2, -9.0) for i in range(len(x))]
    assert all(s is not None for s in shifts)
    assert len(set(shifts)) > 5          # 25 possible shifts over 40 images: they vary
    again = random_shift(x, 2, np.random.default_rng(0), fill=-9.0)
    assert np.array_equal(y, again)      # fixed by the generator


def test_random_shift_fills_with_the_background_and_zero_shift_is_identity():
    x = np.full((3, 1, 5, 5), 7.0)
    x[:, :, 2, 2] = 1.0                  # background 7 is not the minimum here
    assert np.array_equal(random_shift(x, 0, np.random.default_rng(0)), x)
    y = random_shift(x, 1, np.random.default_rng(1), fill=7.0)
    assert set(np.unique(y)) <= {1.0, 7.0}
    default = random_shift(np.zeros((2, 1, 3, 3)) + 5, 1, np.random.default_rng(1))
    assert np.all(default == 5)          # default fill: x.min(), the background


@pytest.mark.parametrize("args, match", [
    ((np.zeros((2, 28, 28)), 2), r"expected \(N, C, H, W\)"),
    ((np.zeros((2, 1, 4, 4)), -1), "max_shift must be an int >= 0"),
    ((np.zeros((2, 1, 4, 4)), 1.5), "max_shift must be an int >= 0"),
], ids=["3d", "negative", "float"])
def test_random_shift_refuses_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        random_shift(*args, np.random.default_rng(0))
    with pytest.raises(ValueError, match="needs rng"):
        random_shift(np.zeros((1, 1, 2, 2)), 1, None)
