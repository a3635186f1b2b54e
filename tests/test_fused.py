"""The fused fast path (npnet/fused.py) against the layers run one by one.

Every test builds the same network twice from the same seed, one with ``fuse=False``, and
compares outputs and every gradient to float32 tolerance.  Where the fused path must not
run (float64, hooks, switched off) the results must be bit-identical to the layers'.
"""
from collections import OrderedDict

import numpy as np
import pytest

import npnet
from npnet import fused
from npnet.losses import CrossEntropyLoss
from npnet.optim import SGD

RTOL, ATOL = 1e-4, 1e-5


def _pair(build, seed=0):
    """The same model twice: fused (default) and unfused."""
    return build(np.random.default_rng(seed), True), build(np.random.default_rng(seed), False)


def _lenet(rng, fuse, dtype=np.float32):
    model = npnet.lenet5(rng=rng, dtype=dtype)
    model.fuse = fuse
    return model


def _block(conv_kw, pool=2, bias=True, dtype=np.float32):
    def build(rng, fuse):
        return npnet.Sequential(
            npnet.Conv2d(**conv_kw, bias=bias, dtype=dtype, rng=rng), npnet.ReLU(),
            npnet.MaxPool2d(pool), fuse=fuse)
    return build


def _run(model, x, grad_out=None, need_grad_in=True):
    model.zero_grad()
    y = model(x)
    g = grad_out if grad_out is not None else np.linspace(
        -1, 1, y.size, dtype=y.dtype).reshape(y.shape)
    gin = model.backward(g, need_grad_in=need_grad_in)
    return y, gin, {k: p.grad.copy() for k, p in model.named_parameters()}


def _assert_same(a, b, exact=False):
    (ya, ga, pa), (yb, gb, pb) = a, b
    check = np.testing.assert_array_equal if exact else (
        lambda u, v: np.testing.assert_allclose(u, v, rtol=RTOL, atol=ATOL))
    check(ya, yb)
    assert (ga is None) == (gb is None)
    if ga is not None:
        check(ga, gb)
    assert pa.keys() == pb.keys()
    for k in pa:
        check(pa[k], pb[k])


BLOCKS = {
    "lenet_conv1_k5_p2": dict(in_channels=1, out_channels=6, kernel_size=5, padding=2),
    "lenet_conv2_k5_p0": dict(in_channels=6, out_channels=16, kernel_size=5),
    "k3_p1_odd_map": dict(in_channels=3, out_channels=5, kernel_size=3, padding=1),
    "rect_k3x5_p0x2": dict(in_channels=2, out_channels=7, kernel_size=(3, 5), padding=(0, 2)),
}
SHAPES = {"lenet_conv1_k5_p2": (5, 1, 28, 28), "lenet_conv2_k5_p0": (4, 6, 14, 14),
          "k3_p1_odd_map": (3, 3, 9, 7), "rect_k3x5_p0x2": (2, 2, 11, 8)}


@pytest.mark.parametrize("name", BLOCKS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_block_matches_layers(name, bias):
    fast, slow = _pair(_block(BLOCKS[name], bias=bias))
    x = np.random.default_rng(1).standard_normal(SHAPES[name]).astype(np.float32)
    a = _run(fast, x)
    assert fast._plan.last_path == [True]
    _assert_same(a, _run(slow, x))


def test_block_takes_the_fused_path():
    fast, _ = _pair(_block(BLOCKS["lenet_conv2_k5_p0"]))
    x = np.random.default_rng(1).standard_normal((2, 6, 14, 14)).astype(np.float32)
    fast(x)
    assert fast._fused_pass and fast._plan.last_path == [True]
    assert fast[0]._cache is None          # the layers' own caches stay empty


@pytest.mark.parametrize("need_grad_in", [True, False], ids=["grad_in", "no_grad_in"])
def test_lenet5_matches_layers(need_grad_in):
    fast, slow = _pair(_lenet)
    x = np.random.default_rng(2).standard_normal((16, 1, 28, 28)).astype(np.float32)
    a = _run(fast, x, need_grad_in=need_grad_in)
    b = _run(slow, x, need_grad_in=need_grad_in)
    assert fast._plan.last_path == [True, True, True, False, False, False, False, False]
    _assert_same(a, b)


def test_lenet5_training_matches_layers():
    """A few SGD steps: the two models' weights stay together."""
    fast, slow = _pair(_lenet)
    rng = np.random.default_rng(3)
    crit = CrossEntropyLoss()
    opts = [SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (fast, slow)]
    for _ in range(5):
        x = rng.standard_normal((32, 1, 28, 28)).astype(np.float32)
        t = rng.integers(0, 10, 32)
        for m, opt in zip((fast, slow), opts):
            opt.zero_grad()
            crit(m(x), t)
            m.backward(crit.backward(), need_grad_in=False)
            opt.step()
    for (k, p), (_, q) in zip(fast.named_parameters(), slow.named_parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-4, atol=1e-5, err_msg=k)


def test_eval_mode_matches_and_keeps_no_cache():
    fast, slow = _pair(_lenet)
    fast.eval()
    slow.eval()
    x = np.random.default_rng(4).standard_normal((7, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(fast(x), slow(x), rtol=RTOL, atol=ATOL)
    assert all(getattr(s, "_cache", None) is None for s in fast._plan.steps)
    with pytest.raises(RuntimeError):
        fast.backward(np.ones((7, 10), np.float32))


def test_single_image():
    fast, slow = _pair(_lenet)
    x = np.random.default_rng(5).standard_normal((1, 1, 28, 28)).astype(np.float32)
    _assert_same(_run(fast, x), _run(slow, x))


def test_gradients_accumulate():
    fast, _ = _pair(_lenet)
    x = np.random.default_rng(6).standard_normal((4, 1, 28, 28)).astype(np.float32)
    _, _, once = _run(fast, x)
    y = fast(x)
    fast.backward(np.linspace(-1, 1, y.size, dtype=y.dtype).reshape(y.shape))
    for k, p in fast.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * once[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_float64_runs_the_layers():
    fast, slow = (_lenet(np.random.default_rng(0), f, np.float64) for f in (True, False))
    x = np.random.default_rng(7).standard_normal((3, 1, 28, 28))
    a, b = _run(fast, x), _run(slow, x)
    # every fused step is float32-only: in float64, the reference, the layers themselves
    # run (so a float64 gradient check of LeNet-5 checks each layer's own backward)
    assert not any(fast._plan.last_path)
    (ya, ga, pa), (yb, gb, pb) = a, b
    for u, v in [(ya, yb), (ga, gb)] + [(pa[k], pb[k]) for k in pa]:
        assert u.dtype == np.float64
        np.testing.assert_array_equal(u, v)


def test_global_switch_off_is_bit_identical(monkeypatch):
    monkeypatch.setattr(fused, "enabled", False)
    fast, slow = _pair(_lenet)
    x = np.random.default_rng(8).standard_normal((3, 1, 28, 28)).astype(np.float32)
    _assert_same(_run(fast, x), _run(slow, x), exact=True)
    assert not fast._fused_pass


def test_hooks_see_every_layer_and_disable_fusion():
    fast, slow = _pair(_lenet)
    seen = []
    fast["act1"].register_forward_hook(lambda layer, x, y: seen.append(("f", x.shape, y.shape)))
    handle = fast["conv2"].register_backward_hook(
        lambda layer, gin, gout: seen.append(("b", gin.shape, gout.shape)))
    x = np.random.default_rng(9).standard_normal((2, 1, 28, 28)).astype(np.float32)
    _assert_same(_run(fast, x), _run(slow, x), exact=True)
    assert seen == [("f", (2, 6, 28, 28), (2, 6, 28, 28)), ("b", (2, 6, 14, 14),
                                                            (2, 16, 10, 10))]
    handle.remove()
    fast["act1"]._forward_hooks.clear()
    fast(x)
    assert fast._fused_pass                         # no hooks left: fused again


def test_nested_sequential_hooks_disable_fusion():
    inner = npnet.Sequential(npnet.Conv2d(1, 2, 3, rng=np.random.default_rng(0)),
                             npnet.ReLU(), npnet.MaxPool2d(2))
    outer = npnet.Sequential(inner, npnet.Flatten())
    inner[1].register_forward_hook(lambda *a: None)
    outer(np.zeros((1, 1, 8, 8), np.float32))
    assert not inner._fused_pass


def test_patterns_that_do_not_fit_run_the_layers():
    def build(rng, fuse):
        return npnet.Sequential(OrderedDict(
            conv_s2=npnet.Conv2d(2, 4, 3, stride=2, rng=rng), relu1=npnet.ReLU(),
            pool3=npnet.MaxPool2d(3, stride=1), conv=npnet.Conv2d(4, 3, 3, padding=1, rng=rng),
            relu2=npnet.ReLU(), pool_p=npnet.MaxPool2d(2, padding=1)), fuse=fuse)
    fast, slow = _pair(build)
    x = np.random.default_rng(10).standard_normal((2, 2, 15, 15)).astype(np.float32)
    _assert_same(_run(fast, x), _run(slow, x), exact=True)
    assert fast._plan is None or not any(fast._plan.last_path)


def test_conv_as_linear_matches_conv():
    def build(rng, fuse):
        return npnet.Sequential(npnet.Conv2d(3, 5, (4, 3), rng=rng), npnet.ReLU(),
                                npnet.Flatten(), fuse=fuse)
    fast, slow = _pair(build)
    for dtype in (np.float32, np.float64):
        for m in (fast, slow):
            for layer in m:
                if "weight" in layer.params:
                    layer.params = {k: v.astype(dtype) for k, v in layer.params.items()}
                    layer.dtype = np.dtype(dtype)
                    layer._init_grads()
        x = np.random.default_rng(11).standard_normal((6, 3, 4, 3)).astype(dtype)
        _assert_same(_run(fast, x), _run(slow, x))
        assert isinstance(fast._plan.steps[0], fused.ConvAsLinear)
        # float32 takes the one-matmul step; float64, the reference, runs the layer
        assert fast._plan.last_path[0] == (dtype == np.float32)
    # a larger input is an ordinary convolution: the layer runs it
    x = np.random.default_rng(12).standard_normal((2, 3, 6, 6))
    _assert_same(_run(fast, x), _run(slow, x), exact=True)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 3, 28, 28), np.float32), "channels"),
    (np.zeros((2, 1, 28, 28), np.float64), "float64"),
    (np.zeros((2, 1, 28), np.float32), "4-D"),
    (np.zeros((2, 1, 3, 3), np.float32), "smaller"),
])
def test_bad_input_is_a_value_error(bad, match):
    fast, _ = _pair(_lenet)
    with pytest.raises(ValueError, match=match):
        fast(bad)


def test_bad_grad_out_is_a_value_error():
    fast, _ = _pair(_block(BLOCKS["lenet_conv2_k5_p0"]))
    y = fast(np.zeros((2, 6, 14, 14), np.float32))
    with pytest.raises(ValueError, match="grad_out"):
        fast.backward(np.zeros((2, 16, 5, 4), np.float32))
    assert y.shape == (2, 16, 5, 5)


def test_training_is_deterministic_and_independent_of_threads():
    import numba

    def train(threads):
        old = npnet.threads.set_num_threads(threads)
        try:
            model = npnet.lenet5(rng=np.random.default_rng(0))
            crit = CrossEntropyLoss()
            opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
            rng = np.random.default_rng(1)
            for _ in range(3):
                x = rng.standard_normal((37, 1, 28, 28)).astype(np.float32)
                t = rng.integers(0, 10, 37)
                opt.zero_grad()
                crit(model(x), t)
                model.backward(crit.backward(), need_grad_in=False)
                opt.step()
            return model.state_dict()
        finally:
            npnet.threads.set_num_threads(old)

    runs = [train(1), train(1), train(numba.config.NUMBA_NUM_THREADS)]
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k], err_msg=k)
        np.testing.assert_array_equal(runs[0][k], runs[2][k], err_msg=k)


def test_a_layer_method_replaced_on_the_instance_runs_as_written():
    fast, slow = _pair(_lenet)
    calls = []
    forward = fast["conv2"].forward
    fast["conv2"].forward = lambda x: calls.append(x.shape) or forward(x)
    x = np.random.default_rng(13).standard_normal((2, 1, 28, 28)).astype(np.float32)
    _assert_same(_run(fast, x), _run(slow, x))
    assert calls == [(2, 6, 14, 14)]
    assert fast._plan.last_path[:2] == [True, False]


def _conv_relu_pool(rng):
    return npnet.Sequential(npnet.Conv2d(1, 2, 3, padding=1, rng=rng), npnet.ReLU(),
                            npnet.MaxPool2d(2))


def test_a_second_backward_after_a_fused_pass_raises():
    """Caches left by an earlier unfused forward must not serve a fused pass's backward."""
    m = _conv_relu_pool(np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 1, 6, 6)).astype(np.float32)
    with npnet.hooks.trace(m):
        m(x)                                     # unfused (hooks): the layers keep caches
    y = m(x)                                     # fused
    m.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match="needs a forward"):
        m.backward(np.ones_like(y))


def test_a_hook_registered_after_a_fused_forward_is_refused_not_skipped():
    m = _conv_relu_pool(np.random.default_rng(0))
    y = m(np.random.default_rng(1).standard_normal((2, 1, 6, 6)).astype(np.float32))
    handle = m[0].register_backward_hook(lambda *a: None)
    with pytest.raises(RuntimeError, match="registered after the forward pass"):
        m.backward(np.ones_like(y))
    handle.remove()


def test_a_refused_grad_out_keeps_the_fused_cache_for_a_corrected_retry():
    m = _conv_relu_pool(np.random.default_rng(0))
    y = m(np.random.default_rng(1).standard_normal((2, 1, 6, 6)).astype(np.float32))
    assert m._fused_pass
    with pytest.raises(ValueError, match="grad_out has shape"):
        m.backward(np.ones((2, 2, 2, 2), np.float32))
    assert m.backward(np.ones_like(y)).shape == (2, 1, 6, 6)
