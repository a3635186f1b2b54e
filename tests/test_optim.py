"""Tests of npnet/optim: torch parity of SGD, Adam and the schedulers, state_dict, validation."""
import copy
import math

import numpy as np
import pytest
import torch

import npnet.optim as optim
from npnet.layers.base import Parameter

SHAPES = [(3, 4), (5,), (2, 3, 2)]     # a weight-like, a bias-like and a conv-like parameter
N_STEPS = 5


def make_params(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return [Parameter(rng.standard_normal(s).astype(dtype), np.zeros(s, dtype)) for s in SHAPES]


def make_grads(n_steps, dtype=np.float32, seed=1):
    """One list of gradients per step, the same for npnet and torch."""
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(n_steps)]


def run_npnet(make_opt, params, grads):
    opt = make_opt(params)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad[...] = g
        opt.step()
    return opt


def run_torch(torch_cls, kwargs, params, grads):
    tparams = [torch.tensor(p.data.copy()) for p in params]
    opt = torch_cls(tparams, **kwargs)
    for step_grads in grads:
        for t, g in zip(tparams, step_grads):
            t.grad = torch.tensor(g)
        opt.step()
    return tparams, opt


SGD_CONFIGS = {
    "plain": dict(lr=0.1),
    "momentum": dict(lr=0.1, momentum=0.9),
    "momentum_dampening": dict(lr=0.1, momentum=0.9, dampening=0.3),
    "nesterov": dict(lr=0.1, momentum=0.9, nesterov=True),
    "weight_decay": dict(lr=0.1, weight_decay=0.01),
    "momentum_wd": dict(lr=0.05, momentum=0.8, weight_decay=0.1),
    "nesterov_wd": dict(lr=0.05, momentum=0.5, weight_decay=0.1, nesterov=True),
    "all_but_nesterov": dict(lr=0.3, momentum=0.99, dampening=0.5, weight_decay=0.02),
}
ADAM_CONFIGS = {
    "default": dict(),
    "lr1e-2_wd": dict(lr=1e-2, weight_decay=0.1),
    "betas_0.5_0.9": dict(lr=1e-2, betas=(0.5, 0.9)),     # lerp weight 0.5: torch's other branch
    "betas_0_0.99": dict(lr=1e-2, betas=(0.0, 0.99)),     # beta1 = 0: m is the gradient itself
    "eps1e-3_wd": dict(lr=3e-3, betas=(0.8, 0.95), eps=1e-3, weight_decay=1e-2),
}
CASES = [(optim.SGD, torch.optim.SGD, k, v) for k, v in SGD_CONFIGS.items()] + [
    (optim.Adam, torch.optim.Adam, k, v) for k, v in ADAM_CONFIGS.items()]
CASE_IDS = [f"{c[0].__name__}-{c[2]}" for c in CASES]

# float32: torch's CPU kernels fuse each a + s*b into one rounding where NumPy rounds twice,
# and its vectorised sqrt is not always correctly rounded, so each operation may differ by
# ~1 ulp (6e-8 relative).  A handful of operations per step over 5 steps stays well inside
# 1e-6 relative; atol 1e-7 (~1 ulp of 1) covers weights that pass near 0.  A wrong order of
# operations or a wrong bias correction shows up at 1e-4 and beyond.
F32_TOL = dict(rtol=1e-6, atol=1e-7)
# float64: the same operations, 2^-52 per rounding
F64_TOL = dict(rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("np_cls,torch_cls,name,kwargs", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_matches_torch(np_cls, torch_cls, name, kwargs, dtype):
    params, grads = make_params(dtype), make_grads(N_STEPS, dtype)
    start = [p.data.copy() for p in params]
    tparams, topt = run_torch(torch_cls, kwargs, params, grads)
    opt = run_npnet(lambda ps: np_cls(ps, **kwargs), params, grads)
    tol = F32_TOL if dtype == np.float32 else F64_TOL
    for p, t, s in zip(params, tparams, start):
        assert not np.array_equal(p.data, s)            # the weights did move
        np.testing.assert_allclose(p.data, t.numpy(), **tol)
        assert p.data.dtype == dtype
    # the state agrees too, buffer by buffer, in the parameter's dtype
    for state, t in zip(opt.state, tparams):
        tstate = topt.state[t]
        for key, value in state.items():
            if key == "step":
                assert value == N_STEPS == int(tstate["step"])
            elif value is None:
                assert tstate.get(key) is None
            else:
                assert value.dtype == dtype
                np.testing.assert_allclose(value, tstate[key].numpy(), **tol)


@pytest.mark.parametrize("np_cls,kwargs", [(optim.SGD, SGD_CONFIGS["momentum_wd"]),
                                           (optim.Adam, ADAM_CONFIGS["lr1e-2_wd"])],
                         ids=["SGD", "Adam"])
def test_step_updates_in_place_and_leaves_grads(np_cls, kwargs):
    params = make_params()
    arrays = [p.data for p in params]
    grads = make_grads(1)[0]
    for p, g in zip(params, grads):
        p.grad[...] = g
    opt = np_cls(params, **kwargs)
    opt.step()
    for p, a, g in zip(opt.params, arrays, grads):
        assert p.data is a                                   # the model's own array
        np.testing.assert_array_equal(p.grad, g)             # weight decay did not leak in


@pytest.mark.parametrize("name", sorted(SGD_CONFIGS))
def test_sgd_on_strided_arrays_equals_sgd_on_contiguous_ones(name):
    """A parameter, gradient or loaded momentum buffer that is a strided view (a
    transpose) gets the same update, bit for bit, written into its own memory."""
    rng = np.random.default_rng(5)
    w, gs = rng.standard_normal((5, 3)), rng.standard_normal((3, 3, 5))
    results = []
    for strided in (False, True):
        data = np.array(w).T if strided else np.ascontiguousarray(w.T)    # (3, 5) both ways
        grad = np.zeros((5, 3)).T if strided else np.zeros((3, 5))
        assert data.flags.c_contiguous != strided and grad.flags.c_contiguous != strided
        opt = optim.SGD([(data, grad)], **SGD_CONFIGS[name])
        for step in range(3):
            grad[...] = gs[step]
            opt.step()
            if step == 0 and strided and opt.state[0]["momentum_buffer"] is not None:
                state = opt.state_dict()                 # reload the buffer as a transpose
                buf = state["state"]["0"]["momentum_buffer"]
                state["state"]["0"]["momentum_buffer"] = np.asfortranarray(buf)
                opt.load_state_dict(state)
        results.append(data)
    np.testing.assert_array_equal(results[0], results[1])


def test_accepts_a_generator_and_plain_pairs():
    params = make_params()
    opt = optim.SGD(((p.data, p.grad) for p in params), lr=0.1)
    params[0].grad[...] = 1.0
    before = params[0].data.copy()
    opt.step()
    np.testing.assert_allclose(params[0].data, before - np.float32(0.1))


def test_zero_grad_fills_in_place():
    params = make_params()
    grads = [p.grad for p in params]
    for g in grads:
        g[...] = 3.0
    optim.Adam(params).zero_grad()
    for p, g in zip(params, grads):
        assert p.grad is g and not g.any()


def test_lr_change_applies_to_next_step():
    param = Parameter(np.zeros(2), np.ones(2))
    opt = optim.SGD([param], lr=1.0)
    sched = optim.StepLR(opt, step_size=1, gamma=0.5)
    opt.step()
    np.testing.assert_array_equal(param.data, [-1.0, -1.0])
    sched.step()
    assert opt.lr == 0.5
    opt.step()
    np.testing.assert_array_equal(param.data, [-1.5, -1.5])
    opt.lr = 0.25                                   # by hand, too
    opt.step()
    np.testing.assert_array_equal(param.data, [-1.75, -1.75])


# -- state_dict -------------------------------------------------------------------------------
OPT_FACTORIES = {
    "SGD_nesterov": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "SGD_plain": lambda ps: optim.SGD(ps, lr=0.1),
    "Adam": lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=0.01),
}


def assert_plain_tree(d):
    """str keys all the way down; leaves arrays or plain scalars (what npnet.save writes)."""
    for key, value in d.items():
        assert type(key) is str
        if isinstance(value, dict):
            assert_plain_tree(value)
        else:
            assert value is None or type(value) in (np.ndarray, int, float, bool, str), (key, value)


@pytest.mark.parametrize("factory", OPT_FACTORIES.values(), ids=OPT_FACTORIES.keys())
def test_state_dict_round_trip_is_bitwise(factory):
    grads = make_grads(5)
    params = make_params()
    opt = run_npnet(factory, params, grads[:3])
    saved = opt.state_dict()
    assert_plain_tree(saved)
    assert set(saved["state"]) == {"0", "1", "2"}

    twin_params = [Parameter(p.data.copy(), p.grad.copy()) for p in params]
    twin = factory(twin_params)
    twin.load_state_dict(saved)
    for o, ps in ((opt, params), (twin, twin_params)):
        for step_grads in grads[3:]:
            for p, g in zip(ps, step_grads):
                p.grad[...] = g
            o.step()
    for p, q in zip(params, twin_params):
        np.testing.assert_array_equal(p.data, q.data)
    for s, t in zip(opt.state, twin.state):
        assert s.keys() == t.keys()
        for key in s:
            np.testing.assert_array_equal(s[key], t[key])


def test_state_dict_has_the_expected_layout():
    opt = run_npnet(lambda ps: optim.Adam(ps, lr=0.01), make_params(), make_grads(2))
    d = opt.state_dict()
    assert d["type"] == "Adam" and d["lr"] == 0.01 and (d["beta1"], d["beta2"]) == (0.9, 0.999)
    assert d["state"]["1"]["step"] == 2 and type(d["state"]["1"]["step"]) is int
    assert d["state"]["2"]["exp_avg"].shape == SHAPES[2]
    sgd = optim.SGD(make_params(), lr=0.1, momentum=0.9)
    assert sgd.state_dict()["state"]["0"] == {"momentum_buffer": None}   # before the first step


@pytest.mark.parametrize("factory", OPT_FACTORIES.values(), ids=OPT_FACTORIES.keys())
def test_state_dict_shares_no_memory(factory):
    params = make_params()
    grads = make_grads(2)
    opt = run_npnet(factory, params, grads[:1])
    saved = opt.state_dict()
    snapshot = copy.deepcopy(saved)
    run_npnet(lambda ps: opt, params, grads[1:])     # a later step does not change the dict
    for key, entry in saved["state"].items():
        for name, value in entry.items():
            np.testing.assert_array_equal(value, snapshot["state"][key][name])
    opt.load_state_dict(saved)
    for entry in saved["state"].values():            # nor does scribbling on the loaded dict
        for value in entry.values():
            if isinstance(value, np.ndarray):
                value[...] = 123.0
    for s in opt.state:
        for value in s.values():
            if isinstance(value, np.ndarray):
                assert not np.any(value == 123.0)


def _adam_state():
    return run_npnet(lambda ps: optim.Adam(ps), make_params(), make_grads(1)).state_dict()


def _edited(d, edit):
    d = copy.deepcopy(d)
    edit(d)
    return d


REFUSALS = {
    "not_a_dict": (lambda: [1, 2], r"expected a dict, got list"),
    "wrong_type": (lambda: optim.SGD(make_params(), lr=0.1).state_dict(), r"the state is of a SGD, not a Adam"),
    "missing_lr": (lambda: _edited(_adam_state(), lambda d: d.pop("lr")), r"missing keys \['lr'\]"),
    "negative_lr": (lambda: _edited(_adam_state(), lambda d: d.update(lr=-1.0)), r"invalid learning rate lr: -1.0"),
    "bad_beta": (lambda: _edited(_adam_state(), lambda d: d.update(beta2=1.0)), r"invalid beta parameter at index 1 .*in \[0, 1\)"),
    "too_few_params": (lambda: _edited(_adam_state(), lambda d: d["state"].pop("2")),
                       r"the state holds 2 parameters, this optimizer has 3"),
    "wrong_shape": (lambda: _edited(_adam_state(), lambda d: d["state"]["0"].update(exp_avg=np.zeros((4, 3)))),
                    r"parameter 0 'exp_avg' has shape \(4, 3\), the parameter has shape \(3, 4\)"),
    "missing_buffer": (lambda: _edited(_adam_state(), lambda d: d["state"]["1"].pop("exp_avg_sq")),
                       r"parameter 1 state should have keys \['exp_avg', 'exp_avg_sq', 'step'\]"),
    "none_buffer": (lambda: _edited(_adam_state(), lambda d: d["state"]["1"].update(exp_avg=None)),
                    r"parameter 1 'exp_avg' is None"),
    "float_step": (lambda: _edited(_adam_state(), lambda d: d["state"]["1"].update(step=1.5)),
                   r"parameter 1 'step' should be int, got 1.5"),
}


@pytest.mark.parametrize("make_dict,message", REFUSALS.values(), ids=REFUSALS.keys())
def test_load_state_dict_refusals_leave_optimizer_untouched(make_dict, message):
    params = make_params()
    opt = run_npnet(lambda ps: optim.Adam(ps, lr=0.5), params, make_grads(2, seed=7))
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=r"^Adam\.load_state_dict: " + message):
        opt.load_state_dict(make_dict())
    after = opt.state_dict()
    assert after.keys() == before.keys()
    assert {k: v for k, v in after.items() if k != "state"} == {k: v for k, v in before.items() if k != "state"}
    for key, entry in before["state"].items():
        for name, value in entry.items():
            np.testing.assert_array_equal(after["state"][key][name], value)


def test_sgd_load_refuses_wrong_buffer_shape():
    params = make_params()
    opt = run_npnet(lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), params, make_grads(1))
    d = opt.state_dict()
    d["state"]["1"]["momentum_buffer"] = np.zeros(6, np.float32)
    with pytest.raises(ValueError, match=r"parameter 1 'momentum_buffer' has shape \(6,\), the parameter has shape \(5,\)"):
        optim.SGD(make_params(), lr=0.1, momentum=0.9).load_state_dict(d)


def test_load_state_dict_casts_to_param_dtype_and_reads_numpy_scalars():
    # a file reader may hand back NumPy scalars and float64 arrays
    d = run_npnet(lambda ps: optim.Adam(ps), make_params(), make_grads(1)).state_dict()
    d["lr"] = np.float64(0.02)
    for entry in d["state"].values():
        entry["step"] = np.int64(entry["step"])
        entry["exp_avg"] = entry["exp_avg"].astype(np.float64)
    opt = optim.Adam(make_params())
    opt.load_state_dict(d)
    assert type(opt.lr) is float and opt.lr == 0.02
    assert type(opt.state[0]["step"]) is int and opt.state[0]["exp_avg"].dtype == np.float32


# -- construction -----------------------------------------------------------------------------
BAD_ARGS = {
    "sgd_negative_lr": (lambda ps: optim.SGD(ps, lr=-0.1), r"^SGD: invalid learning rate lr: -0.1"),
    "sgd_negative_momentum": (lambda ps: optim.SGD(ps, lr=0.1, momentum=-0.5), r"^SGD: invalid momentum: -0.5"),
    "sgd_negative_wd": (lambda ps: optim.SGD(ps, lr=0.1, weight_decay=-1), r"^SGD: invalid weight_decay: -1"),
    "nesterov_no_momentum": (lambda ps: optim.SGD(ps, lr=0.1, nesterov=True),
                             r"^SGD: Nesterov momentum requires momentum > 0 and dampening == 0, got momentum=0"),
    "nesterov_dampening": (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
                           r"dampening=0.1"),
    "sgd_lr_string": (lambda ps: optim.SGD(ps, lr="0.1"), r"^SGD: invalid learning rate lr: '0.1'"),
    "adam_negative_lr": (lambda ps: optim.Adam(ps, lr=-1e-3), r"^Adam: invalid learning rate lr: -0.001"),
    "adam_beta1_one": (lambda ps: optim.Adam(ps, betas=(1.0, 0.999)), r"^Adam: invalid beta parameter at index 0 \(beta1\): 1.0 \(expected in \[0, 1\)\)"),
    "adam_beta2_negative": (lambda ps: optim.Adam(ps, betas=(0.9, -0.1)), r"^Adam: invalid beta parameter at index 1"),
    "adam_betas_scalar": (lambda ps: optim.Adam(ps, betas=0.9), r"^Adam: betas should be a pair"),
    "adam_negative_eps": (lambda ps: optim.Adam(ps, eps=-1e-8), r"^Adam: invalid epsilon eps: -1e-08"),
    "adam_negative_wd": (lambda ps: optim.Adam(ps, weight_decay=-0.1), r"^Adam: invalid weight_decay: -0.1"),
    "empty_params": (lambda ps: optim.SGD([], lr=0.1), r"^SGD: got an empty parameter list"),
    "not_a_parameter": (lambda ps: optim.Adam([ps[0].data]), r"^Adam: parameter 0 should be a Parameter\(data, grad\)"),
    "int_param": (lambda ps: optim.SGD([Parameter(np.zeros(3, int), np.zeros(3, int))], lr=0.1),
                  r"^SGD: parameter 0 should be a float NumPy array, got dtype int64"),
    "grad_shape": (lambda ps: optim.SGD([Parameter(np.zeros(3), np.zeros(4))], lr=0.1),
                   r"^SGD: the grad of parameter 0 should have shape \(3,\), got shape \(4,\)"),
}


@pytest.mark.parametrize("build,message", BAD_ARGS.values(), ids=BAD_ARGS.keys())
def test_invalid_arguments(build, message):
    with pytest.raises(ValueError, match=message):
        build(make_params())


def test_torch_refuses_what_we_refuse():
    # our refusals are torch's: the same bad values make torch raise ValueError too
    t = [torch.zeros(2)]
    for make in (lambda: torch.optim.SGD(t, lr=-0.1), lambda: torch.optim.SGD(t, lr=0.1, nesterov=True),
                 lambda: torch.optim.Adam(t, betas=(1.0, 0.999)), lambda: torch.optim.Adam(t, eps=-1e-8),
                 lambda: torch.optim.SGD([], lr=0.1)):
        with pytest.raises(ValueError):
            make()


# -- schedulers -------------------------------------------------------------------------------
def scheduler_pair(np_make, torch_make, lr=0.1):
    opt = optim.SGD([Parameter(np.zeros(1), np.zeros(1))], lr=lr)
    topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    return opt, np_make(opt), topt, torch_make(topt)


def compare_schedules(opt, sched, topt, tsched, n_steps):
    for _ in range(n_steps):
        topt.step()                       # torch warns if its scheduler steps first
        tsched.step()
        sched.step()
        expected = tsched.get_last_lr()[0]
        # the same float64 operations in the same order: 1e-12 relative leaves room only
        # for a reordered formula; abs 1e-18 for rates that reach eta_min = 0
        assert sched.get_last_lr() == [pytest.approx(expected, rel=1e-12, abs=1e-18)]
        assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12, abs=1e-18)
        assert sched.last_epoch == tsched.last_epoch


STEP_CASES = [(1, 0.5), (3, 0.1), (7, 0.9), (2, 1.5)]


@pytest.mark.parametrize("step_size,gamma", STEP_CASES, ids=[f"s{s}_g{g}" for s, g in STEP_CASES])
def test_step_lr_matches_torch(step_size, gamma):
    opt, sched, topt, tsched = scheduler_pair(
        lambda o: optim.StepLR(o, step_size, gamma),
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size, gamma))
    assert sched.last_epoch == 0 and sched.get_last_lr() == [0.1] == tsched.get_last_lr()
    compare_schedules(opt, sched, topt, tsched, 30)
    # and the closed form, when nothing else touched lr
    assert opt.lr == pytest.approx(0.1 * gamma ** (30 // step_size), rel=1e-12)


COSINE_CASES = [(1, 0.0), (2, 0.0), (5, 0.001), (10, 0.0), (10, 0.05), (17, 1e-4)]


@pytest.mark.parametrize("t_max,eta_min", COSINE_CASES, ids=[f"T{t}_min{m}" for t, m in COSINE_CASES])
def test_cosine_annealing_matches_torch(t_max, eta_min):
    opt, sched, topt, tsched = scheduler_pair(
        lambda o: optim.CosineAnnealingLR(o, t_max, eta_min),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, t_max, eta_min))
    assert sched.get_last_lr() == tsched.get_last_lr() == [0.1]
    compare_schedules(opt, sched, topt, tsched, 3 * t_max + 3)    # past T_max and back up


def test_cosine_annealing_follows_the_cosine():
    opt, sched, _, _ = scheduler_pair(lambda o: optim.CosineAnnealingLR(o, 8, 0.01),
                                      lambda o: None, lr=0.2)
    for e in range(1, 25):
        sched.step()
        expected = 0.01 + (0.2 - 0.01) * (1 + math.cos(math.pi * e / 8)) / 2
        assert opt.lr == pytest.approx(expected, rel=1e-12)
    # with no noise the bottom is eta_min and the top base_lr again at 2 T_max
    assert sched.last_epoch == 24


def test_schedulers_chain_like_torch():
    # two schedulers on one optimizer, each building on the other's lr (torch's chaining)
    opt, topt = (optim.SGD([Parameter(np.zeros(1), np.zeros(1))], lr=0.1),
                 torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))
    ours = [optim.StepLR(opt, 3, 0.5), optim.CosineAnnealingLR(opt, 6, 0.001)]
    theirs = [torch.optim.lr_scheduler.StepLR(topt, 3, 0.5),
              torch.optim.lr_scheduler.CosineAnnealingLR(topt, 6, 0.001)]
    for _ in range(20):
        topt.step()
        for s, t in zip(ours, theirs):
            s.step()
            t.step()
        assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12, abs=1e-18)


SCHED_FACTORIES = {
    "StepLR": lambda o: optim.StepLR(o, 3, 0.5),
    "CosineAnnealingLR": lambda o: optim.CosineAnnealingLR(o, 7, 0.001),
}


@pytest.mark.parametrize("factory", SCHED_FACTORIES.values(), ids=SCHED_FACTORIES.keys())
def test_scheduler_state_dict_round_trip(factory):
    opt = optim.SGD(make_params(), lr=0.1, momentum=0.9)
    sched = factory(opt)
    for _ in range(5):
        sched.step()
    saved_opt, saved = opt.state_dict(), sched.state_dict()
    assert_plain_tree(saved)
    assert saved["last_epoch"] == 5

    opt2 = optim.SGD(make_params(), lr=0.1, momentum=0.9)
    sched2 = factory(opt2)                 # made first: a scheduler's constructor sets lr
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved)
    assert sched2.get_last_lr() == sched.get_last_lr() and opt2.lr == opt.lr
    for _ in range(12):
        sched.step()
        sched2.step()
        assert opt2.lr == opt.lr           # bitwise: the same operations on the same floats


SCHED_REFUSALS = {
    "wrong_type": (lambda d: d.update(type="StepLR"), r"the state is of a StepLR, not a CosineAnnealingLR"),
    "missing_T_max": (lambda d: d.pop("T_max"), r"missing keys \['T_max'\]"),
    "zero_T_max": (lambda d: d.update(T_max=0), r"T_max should be a positive integer, got 0"),
    "string_epoch": (lambda d: d.update(last_epoch="5"), r"'last_epoch' should be a number"),
}


@pytest.mark.parametrize("edit,message", SCHED_REFUSALS.values(), ids=SCHED_REFUSALS.keys())
def test_scheduler_load_refusals(edit, message):
    sched = optim.CosineAnnealingLR(optim.SGD(make_params(), lr=0.1), 5)
    sched.step()
    d = sched.state_dict()
    edit(d)
    with pytest.raises(ValueError, match=r"^CosineAnnealingLR\.load_state_dict: " + message):
        sched.load_state_dict(d)
    assert sched.last_epoch == 1 and sched.T_max == 5


BAD_SCHED = {
    "step_size_zero": (lambda o: optim.StepLR(o, 0), r"^StepLR: step_size should be a positive integer, got 0"),
    "step_size_float": (lambda o: optim.StepLR(o, 2.5), r"^StepLR: step_size should be a positive integer, got 2.5"),
    "T_max_negative": (lambda o: optim.CosineAnnealingLR(o, -3), r"^CosineAnnealingLR: T_max should be a positive integer, got -3"),
}


@pytest.mark.parametrize("build,message", BAD_SCHED.values(), ids=BAD_SCHED.keys())
def test_scheduler_invalid_arguments(build, message):
    with pytest.raises(ValueError, match=message):
        build(optim.SGD(make_params(), lr=0.1))


def test_scheduler_needs_an_optimizer():
    with pytest.raises(TypeError, match="StepLR: dict is not an npnet Optimizer"):
        optim.StepLR({"lr": 0.1}, 3)


def test_lr_scheduler_module_path():
    assert optim.lr_scheduler.StepLR is optim.StepLR
    assert optim.lr_scheduler.CosineAnnealingLR is optim.CosineAnnealingLR
