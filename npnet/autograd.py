"""Backward without writing one: a forward records each layer call, backward replays it.

Calling a model (a Module that writes only ``forward``) in training mode starts a **tape**:
every layer it calls, however deep, appends one :class:`Call` holding

* the layer,
* what that layer's forward kept for its backward (its ``_cache``, moved off the layer
  into the call, so a layer used twice keeps two, one per call),
* where each of its inputs came from: an earlier call, or the model's input.

Each layer returns a :class:`~npnet.tensor.Tensor` that remembers its call.
``model.backward(grad_out)`` then walks the tape from the last call to the first (the
order of the forward is a topological order: a call's inputs were made before it), gives
each layer back its saved state, calls its hand-written ``backward`` and adds the gradient
it returns to the call that made each input.  A value used by two calls receives the sum
of their gradients, as the chain rule says.  That is all of autograd; micrograd does the
same for scalars, and docs/autograd.md works an example by hand.

What the tape refuses, rather than give a wrong gradient:

* an input that no recorded call made (``np.concatenate`` of two outputs, ``a + b``, a
  slice): the error names the layer and the array at backward, before anything changes;
* changing a recorded output in place before the next call reads it: outputs are
  read-only while the forward runs (NumPy raises at the assignment);
* and nothing a call keeps can change after the fact: an array it keeps that shares memory
  with something the caller can write (the model's input, a parameter, the final output)
  is copied into the call.
"""
from __future__ import annotations

import gc
import threading
import weakref

import numpy as np

from .kernels import compiles
from .tensor import Deferred, Tensor, realize

__all__ = ["Tape", "Call", "tape_of", "CONST"]

_local = threading.local()          # .ctx: the forward being recorded; .muted: hooks off


def hooks_muted() -> bool:
    return getattr(_local, "muted", False)


def current_call():
    """The Call whose backward is running (for hooks that need to know which call of a
    layer used twice they are seeing); None outside a model's backward."""
    return getattr(_local, "call", None)


class _Const:
    """The source of an array marked as carrying no gradient (functional.detach)."""
    def __repr__(self):
        return "CONST"


CONST = _Const()


class Input:
    """The source of the model's k-th input."""
    __slots__ = ("mark", "index", "shape", "dtype", "grad")

    def __init__(self, tape, index, shape, dtype):
        self.mark, self.index, self.shape, self.dtype = tape.mark, index, shape, dtype
        self.grad = None


class Call:
    """One recorded layer call: the layer, its saved state, where its inputs came from.

    ``mark`` is its tape's mark (``Tape.mark``, a plain object), which tells whether an
    array came from this forward or an earlier one.  The tape holds its calls; were the
    calls to hold the tape as well, every training forward would leave a reference cycle
    that only Python's garbage collector frees (docs/performance.md)."""
    __slots__ = ("module", "saved", "sources", "shape", "dtype", "grad", "mark", "index",
                 "label", "owners")

    def __init__(self, module, saved, sources, shape, dtype, tape, label=None):
        self.module, self.saved, self.sources = module, saved, sources
        self.shape, self.dtype, self.mark, self.label = shape, dtype, tape.mark, label
        self.grad = None
        self.index = len(tape.calls)


class Tape:
    """The record of one training forward of a model; ``print(tape)`` lists its calls."""

    def __init__(self, model):
        self.model = model
        self.calls: list[Call] = []
        self.inputs: list[Input] = []
        self.out_sources = None          # the source of each output array
        self.out_single = True           # the forward returned one array, not a tuple
        self.problems: list[str] = []    # inputs no recorded call made: refused at backward
        self.fused: list[Call] = []      # the calls npnet/fusion.py ran fused
        self.scopes = {}                 # call index -> backward hooks of a model to fire
        self._buffer_ids = None
        self.mark = object()             # what its calls and inputs carry (Call's docstring)

    # where an array came from -------------------------------------------------------------
    def source(self, a, module, position):
        """The Call or Input that made ``a``; None if it carries no gradient."""
        src = getattr(a, "_src", None)
        if src is not None and src is not CONST and src.mark is self.mark:
            return src                    # the usual case: an output of this forward
        if not isinstance(a, np.ndarray) or a.dtype.kind != "f" or src is CONST:
            return None
        if src is None and self._is_buffer(a):
            return None                   # a buffer is state, not a function of the input
        self.problems.append(self._describe(a, module, position, src))
        return None

    def _is_buffer(self, a) -> bool:
        if self._buffer_ids is None:
            self._buffer_ids = {id(b) for b in self.model.buffers()}
        return id(a) in self._buffer_ids

    def _describe(self, a, module, position, src) -> str:
        who = f"input {position} of {self.name(module)} ({type(module).__name__})"
        head = f"{type(self.model).__name__}.backward: {who}, an array of shape {a.shape}, "
        fix = ("use a layer or npnet.nn.functional (add, cat, flatten, ...) between layers, "
               "or npnet.nn.functional.detach(a) if no gradient should flow through it")
        if src is not None:
            return head + ("is the output of an earlier forward, not of this one: no "
                           "gradient can flow back into it; " + fix)
        if isinstance(a, Tensor):
            return head + ("was computed with NumPy from a recorded value (a + b, a * 2, "
                           "a[:, :3], a.T, ...), which npnet does not record, so the "
                           "gradient cannot flow back through it; " + fix)
        return head + ("is a plain NumPy array that no recorded call produced (np.concatenate,"
                       " np.asarray of an output, a constant made in forward, ...), so npnet "
                       "cannot tell whether a gradient should flow through it; " + fix)

    # printing ---------------------------------------------------------------------------
    def name(self, module) -> str:
        """``module``'s name in the model, or the name of the operation (e.g. 'add')."""
        for name, m in self.model.named_modules():
            if m is module:
                return name or type(module).__name__
        return getattr(type(module), "label", type(module).__name__)

    def call_names(self) -> list:
        """Each call's name in the model: 'conv1', 'relu#2' (its second call), 'conv1 ->
        act1 -> pool1' (a fused call), 'add' (a functional one)."""
        names = {id(m): (n or type(m).__name__) for n, m in self.model.named_modules()}
        seen = {}

        def name(m):
            base = names.get(id(m), getattr(type(m), "label", type(m).__name__))
            k = seen[id(m)] = seen.get(id(m), 0) + 1
            return call_name(base, k) if id(m) in names else base
        out = []
        for c in self.calls:
            covered = getattr(c.module, "stands_for", None)
            if c.label is not None:
                out.append(c.label)
            elif covered is not None:
                out.append(" -> ".join(name(m) for m in covered))
            else:
                out.append(name(c.module))
        return out

    def __str__(self) -> str:
        rows = []
        for c, what in zip(self.calls, self.call_names()):
            ins = ", ".join(str(s.shape) for s in c.sources if s is not None) or "-"
            rows.append((str(c.index), what, type(c.module).__name__, ins, str(c.shape)))
        fused = sum(1 for c in self.calls if getattr(c.module, "stands_for", None))
        head = (f"{type(self.model).__name__}: the last training forward recorded "
                f"{len(self.calls)} calls ({fused} fused); backward runs them from the "
                "last to the first")
        cols = [("#", "call", "layer", "input", "output")] + rows
        widths = [max(len(r[i]) for r in cols) for i in range(5)]
        lines = [head] + ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()
                          for r in cols]
        return "\n".join(lines)

    __repr__ = __str__


def call_name(name: str, k: int) -> str:
    """The name of the k-th call (from 1) of a layer: 'relu', then 'relu#2', 'relu#3'."""
    return name if k == 1 else f"{name}#{k}"


def tape_of(model):
    """The tape of ``model``'s last training forward, not yet replayed (None if none)."""
    return model.__dict__.get("_tape")


# -- recording -------------------------------------------------------------------------------
def call(module, args, kwargs):
    """``module(*args, **kwargs)`` from outside any model's forward (Module.__call__)."""
    if "_modules" not in module.__dict__:
        raise RuntimeError(f"{type(module).__name__}.__init__ did not call "
                           "super().__init__()")
    if module._is_layer:
        return _top_layer(module, args, kwargs)
    return _top_model(module, args, kwargs)


_view = np.ndarray.view
_setflags = np.ndarray.setflags    # _setflags(a, False): read-only, in a quarter of the time
#                                  of `a.flags.writeable = False` (docs/performance.md)


def _plain(args):
    """What a layer's forward receives: plain ndarrays (no Tensor subclass) and values."""
    return tuple(_view(a, np.ndarray) if isinstance(a, Tensor) else a for a in args)


def _top_layer(module, args, kwargs):
    """A layer called on its own: it keeps its cache for ``layer.backward``, as always."""
    if module._forward_pre_hooks:
        args = _pre_hooks(module, args)
    args = tuple(realize(a) for a in args)
    y = module.forward(*_plain(args), **kwargs)
    y = _check_output(module, y)
    d = module.__dict__
    if d.get("_cache") is not None:
        external = _externals(module, args, None)
        external.add(id(_owner(y)))
        d["_cache"] = _protect(d["_cache"], external, [])
    out = y.view(Tensor)
    if module._forward_hooks:
        out = _forward_hooks(module, args, out)
    return out


def _top_model(module, args, kwargs):
    """A model called from outside any forward: record its calls (in training mode)."""
    d = module.__dict__
    d["_tape"] = None
    tape = Tape(module) if module.training else None
    ctx = _Forward(tape)
    wrapped = []
    for a in args:
        a = realize(a)
        if isinstance(a, np.ndarray):
            t = a.view(Tensor)
            if tape is not None and a.dtype.kind == "f":
                t._src = Input(tape, len(tape.inputs), a.shape, a.dtype)
                tape.inputs.append(t._src)
            _setflags(t, False)                    # read-only: see the module docstring
            a = t
        wrapped.append(a)
    _local.ctx = ctx
    try:
        out = ctx.model(module, tuple(wrapped), kwargs)
        out = ctx.finish(out)
    finally:
        _local.ctx = None
    d["_tape"] = tape
    return out


def _rules():
    """npnet/fusion.py's RULES (imported at first use: fusion is built on the layers, which
    are built on this file)."""
    global _RULES
    if _RULES is None:
        from .fusion import RULES
        _RULES = RULES
    return _RULES


_RULES = None


class _Forward:
    """The state of one top-level forward: its tape (None in eval mode) and the values
    whose computation was deferred (npnet/fusion.py)."""
    __slots__ = ("tape", "deferred", "rules", "compiles")

    def __init__(self, tape):
        self.tape, self.deferred, self.rules = tape, [], _rules()
        self.compiles = compiles()         # Numba's count when the forward began

    def layer(self, module, args, kwargs):
        """A layer called inside the forward (Module.__call__)."""
        d = module.__dict__
        if "_cache" not in d:
            raise RuntimeError(f"{type(module).__name__}.__init__ did not call "
                               "super().__init__()")
        if d["_forward_pre_hooks"]:
            args = _pre_hooks(module, args)
        rule = self.rules.get(type(module))
        if rule is not None and not kwargs:
            out = rule(self, module, args)
            if out is not NotImplemented:
                return out
        return self.run(module, args, kwargs)

    def run(self, module, args, kwargs=None, label=None):
        """Run one layer's forward and record the call."""
        if len(args) == 1:                 # the common case, written out: it is hot
            a = args[0]
            if type(a) is Deferred:
                a = a.value()
                args = (a,)
            plain = (_view(a, np.ndarray),) if type(a) is Tensor else args
        else:
            args = tuple(a.value() if type(a) is Deferred else a for a in args)
            plain = _plain(args)
        if kwargs:
            kwargs = {k: realize(v) for k, v in kwargs.items()}
        d = module.__dict__
        previous = d["_cache"]
        d["_cache"] = None
        _local.ctx = None                  # the layer's own code runs as if called alone
        try:
            y = module.forward(*plain, **kwargs) if kwargs else module.forward(*plain)
        finally:
            _local.ctx = self
        saved = d["_cache"]
        d["_cache"] = previous
        if type(y) is not np.ndarray:
            y = _check_output(module, y)
        out = y.view(Tensor)
        _setflags(out, False)              # read-only while the forward runs (docstring)
        tape = self.tape
        if tape is not None:
            if len(args) == 1:
                sources = (tape.source(args[0], module, 0),)
            else:
                sources = tuple(tape.source(a, module, i) for i, a in enumerate(args))
            if kwargs:
                self._check_kwargs(module, kwargs)
            owners = []
            if saved is not None:
                saved = _protect(saved, _externals(module, args, sources), owners)
            c = Call(module, saved, sources, y.shape, y.dtype, tape, label)
            c.owners = owners
            tape.calls.append(c)
            out._src = c
        if module._forward_hooks:
            out = _forward_hooks(module, args, out)
        return out

    def _check_kwargs(self, module, kwargs):
        tape = self.tape
        for k, v in kwargs.items():
            if isinstance(v, np.ndarray) and getattr(v, "_src", None) is not None:
                tape.problems.append(
                    f"{type(tape.model).__name__}.backward: {tape.name(module)} got the "
                    f"array '{k}' {v.shape} as a keyword argument; only positional inputs "
                    "carry gradients: pass it positionally")

    def model(self, module, args, kwargs):
        """A model called inside a forward: its forward's calls join the tape."""
        if "_modules" not in module.__dict__:
            raise RuntimeError(f"{type(module).__name__}.__init__ did not call "
                               "super().__init__()")
        if module._forward_pre_hooks:
            args = _pre_hooks(module, args)
        scope = None
        if module._backward_hooks and self.tape is not None:
            scope = _Scope(module)
            args = scope.enter(self, args)
        out = module.forward(*args, **kwargs)
        if scope is not None:
            out = scope.exit(self, out)
        if module._forward_hooks:
            out = _map(realize, out)
            out = _forward_hooks(module, args, out)
        return out

    def defer(self, d: Deferred) -> Deferred:
        self.deferred.append(weakref.ref(d))
        return d

    def finish(self, out):
        """End of the top-level forward: compute what is still deferred, hand the outputs
        back writable, and note where each came from (backward starts there)."""
        out = _map(realize, out)
        if compiles() != self.compiles and any(
                ref() is not None and not ref().computed for ref in self.deferred):
            # Numba compiled during this forward: the frames its caught errors hold keep
            # the values that ran fused alive, in cycles; collect them, so that only what
            # the caller kept is still alive below (once per compiling forward: ~50 ms)
            gc.collect()
        for ref in self.deferred:
            d = ref()
            if d is not None and not d.computed:
                d.value()                  # kept by the caller: compute it while inputs hold
        self.deferred = []
        tape = self.tape
        if tape is None:
            for t in (out if isinstance(out, (tuple, list)) else (out,)):
                _writable(t)
            return out
        single = not isinstance(out, (tuple, list))
        leaves = [out] if single else list(out)
        tape.out_single = single
        tape.out_sources = []
        for i, t in enumerate(leaves):
            src = getattr(t, "_src", None) if isinstance(t, np.ndarray) else None
            if isinstance(t, np.ndarray) and t.dtype.kind == "f" and (
                    src is None or src is CONST or src.mark is not tape.mark):
                why = ("is detached (npnet.nn.functional.detach): no gradient flows back from "
                       "it" if src is CONST else "was not produced by a recorded call (it was "
                       "computed with NumPy after the last layer?), so backward cannot start "
                       "from it")
                tape.problems.append(f"{type(tape.model).__name__}.backward: output {i} of "
                                     f"the forward, of shape {t.shape}, {why}")
            tape.out_sources.append(src if src is not CONST else None)
        finals = [t for t in leaves if isinstance(t, np.ndarray)]
        owners = {id(_owner(t)) for t in finals}
        for c in tape.calls:
            if c.saved is not None and not owners.isdisjoint(c.owners):
                c.saved = _protect(c.saved, owners, [])
        for t in finals:
            _writable(t)
        return out


def _writable(t):
    """Hand an output back writable (unless it views a read-only array of the caller's)."""
    if isinstance(t, Tensor) and not t.flags.writeable:
        try:
            _setflags(t, True)
        except ValueError:
            pass


def _check_output(module, y):
    if isinstance(y, Tensor):
        y = _view(y, np.ndarray)
    if not isinstance(y, np.ndarray):
        raise ValueError(f"{module!r}: forward must return a numpy array, got "
                         f"{type(y).__name__}")
    return y


def _map(fn, out):
    if isinstance(out, (tuple, list)):
        return type(out)(fn(o) for o in out)
    return fn(out)


def _owner(a):
    """The object whose memory ``a`` lives in: the end of its chain of bases (NumPy
    shortens the chain only between arrays of one type, so a view of a Tensor view of an
    ndarray is two steps from it)."""
    b = a.base
    while isinstance(b, np.ndarray):
        a, b = b, b.base
    return a if b is None else b


def _externals(module, args, sources):
    """The memory the caller can still write: that of the inputs no recorded call of this
    forward made, and of the module's parameters and buffers (as ids of owners)."""
    ext = set()
    for i, a in enumerate(args):
        if isinstance(a, np.ndarray) and (sources is None or type(sources[i]) is not Call):
            ext.add(id(_owner(a)))
    d = module.__dict__
    for p in d["params"].values():                 # a layer's own, written out: hot
        ext.add(id(p) if p.base is None else id(_owner(p)))
    if d["_buffers"] or d["_modules"]:
        _add_state_owners(d, ext)
    return ext


def _add_state_owners(d, out: set):
    """Add the owners of a module's parameters and buffers (and its children's) to out."""
    for p in d["params"].values():
        out.add(id(p) if p.base is None else id(_owner(p)))
    if d["_buffers"]:
        for b in d["_buffers"].values():
            if b is not None:
                out.add(id(_owner(b)))
    if d["_modules"]:
        for child in d["_modules"].values():
            if child is not None:
                _add_state_owners(child.__dict__, out)


_PLAIN = (int, float, bool, str, type(None), np.dtype, np.float32, np.float64, np.int64)


def _numbers(t: tuple) -> bool:
    """A tuple of numbers (a shape, a stride).  A loop, not all(...): it runs at every
    recorded call, and a generator costs more than the test."""
    for e in t:
        if type(e) not in _PLAIN:
            return False
    return True


def _protect(saved, external: set, owners: list):
    """``saved`` with every array whose memory is in ``external`` (ids of owners) copied:
    what a call keeps for its backward must not change when the caller writes.  The ids
    of the owners of the arrays kept are appended to ``owners``."""
    t = type(saved)
    if t is tuple or t is list:                    # the usual cache: written out, it is hot
        out = None
        for i, v in enumerate(saved):
            tv = type(v)
            if tv in _PLAIN:                           # a number: nothing to protect
                continue
            if tv is np.ndarray or isinstance(v, np.ndarray):
                o = id(v) if v.base is None else id(_owner(v))
                if o in external:
                    w = v.copy()
                    o = id(w)
                else:
                    w = v
                owners.append(o)
            elif tv is tuple and _numbers(v) or isinstance(v, _PLAIN):
                continue                               # a shape, a stride, a dtype
            else:
                w = _protect(v, external, owners)
            if w is not v:
                if out is None:
                    out = list(saved)
                out[i] = w
        if out is None:
            return saved
        return tuple(out) if t is tuple else out
    if isinstance(saved, np.ndarray):
        return _protect((saved,), external, owners)[0]       # as a cache of one
    if t in _PLAIN or isinstance(saved, _PLAIN):
        return saved                               # a number, a dtype: nothing to protect
    if isinstance(saved, tuple):                   # a namedtuple
        return t(*(_protect(v, external, owners) for v in saved))
    if isinstance(saved, dict):
        return {k: _protect(v, external, owners) for k, v in saved.items()}
    if isinstance(saved, list):
        return [_protect(v, external, owners) for v in saved]
    return saved


# -- hooks -----------------------------------------------------------------------------------
def _pre_hooks(module, args):
    for hook in list(module._forward_pre_hooks.values()):
        r = hook(module, args)
        if r is not None:
            args = r if isinstance(r, tuple) else (r,)
    return args


def _forward_hooks(module, args, out):
    for hook in list(module._forward_hooks.values()):
        r = hook(module, args, out)
        if r is not None:
            out = r
    return out


def fire_backward_hooks(module, grad_in, grad_out):
    """Call ``module``'s backward hooks with tuples; a hook may return a new grad_in."""
    multi = isinstance(grad_in, tuple)
    gi = grad_in if multi else (grad_in,)
    go = grad_out if isinstance(grad_out, tuple) else (grad_out,)
    for hook in list(module._backward_hooks.values()):
        r = hook(module, gi, go)
        if r is not None:
            gi = tuple(r) if isinstance(r, (tuple, list)) else (r,)
    return gi if multi else gi[0]


class _Scope:
    """Backward hooks of a *model* (not a layer): identity calls at its entry and exit
    catch the gradients that leave and reach it (as torch does), and the hooks fire when
    the replay has passed its first call."""

    def __init__(self, module):
        self.module = module
        self.grad_input, self.grad_output = [], []

    def enter(self, fwd, args):
        from .module import HookEdge       # a Module: module.py is built on this file
        out = []
        for a in args:
            if isinstance(a, np.ndarray) and a.dtype.kind == "f":
                j = len(self.grad_input)
                self.grad_input.append(None)
                first = len(fwd.tape.calls)
                a = fwd.run(HookEdge(self.grad_input, j), (a,), label="(hook: gradient leaving "
                            f"{type(self.module).__name__})")
                if j == 0:
                    fwd.tape.scopes.setdefault(first, []).append(self)
            out.append(a)
        if not self.grad_input:                      # no array input: fire at the start
            fwd.tape.scopes.setdefault(len(fwd.tape.calls), []).append(self)
        return tuple(out)

    def exit(self, fwd, out):
        from .module import HookEdge       # as in enter

        def edge(o):
            o = realize(o)
            if isinstance(o, np.ndarray) and o.dtype.kind == "f":
                j = len(self.grad_output)
                self.grad_output.append(None)
                return fwd.run(HookEdge(self.grad_output, j), (o,), label="(hook: gradient "
                               f"reaching {type(self.module).__name__})")
            return o
        return _map(edge, out)

    def fire(self):
        for hook in list(self.module._backward_hooks.values()):
            hook(self.module, tuple(self.grad_input), tuple(self.grad_output))


# -- the replay ------------------------------------------------------------------------------
def backward(model, grad_out, need_grad_in=True):
    """Module.backward of a model: check, then replay its tape (see the module docstring)."""
    tape = model.__dict__.get("_tape")
    name = type(model).__name__
    if tape is None:
        raise RuntimeError(f"{name}: backward() needs a forward() in training mode first "
                           "(each forward allows one backward; call the model, model(x), "
                           "not model.forward(x))")
    if tape.problems:                       # refused before any gradient changes
        raise ValueError(tape.problems[0])
    for c in tape.fused:                    # a hook the fused kernel would not call
        for m in c.module.stands_for:
            if m._backward_hooks:
                raise RuntimeError(
                    f"{name}.backward: a backward hook was registered on {tape.name(m)} "
                    f"after the forward, which ran it fused with other layers "
                    f"({type(c.module).__name__}) and so cannot call it; run the forward "
                    "again (a layer with hooks is never fused)")
    grads = _match_grad_out(tape, grad_out, name)       # ValueError keeps the tape
    model.__dict__["_tape"] = None                      # each forward serves one backward
    return replay(tape, grads, need_grad_in)


def replay(tape, grad_out, need_grad_in=True):
    """The backward pass: from the last call to the first, each layer's own backward turns
    the gradient of its output into the gradients of its inputs, and each of those is added
    to the gradient of the call (or model input) that made it.  ``grad_out`` holds one
    gradient per output of the forward.  Returns dL/d(input) (None if not needed)."""
    for src, g in zip(tape.out_sources, grad_out):
        _accumulate(src, g, tape, None)
    later = [[] for _ in tape.inputs]       # parts of dL/d(input) computed when read
    for c in reversed(tape.calls):
        g, c.grad = c.grad, None
        if g is None:                       # nothing reached this call: nothing to give
            c.saved = None
        elif _reads_only_the_input(c, need_grad_in):
            saved = c.saved                 # dL/dx of the images: skipped now, see below
            _run_backward(c, g, need_grad_in=False)
            if need_grad_in:
                later[c.sources[0].index].append((c.module, saved, g))
        else:
            grad_in = _run_backward(c, g)
            for src, gi in zip(c.sources, _one_per_input(c, grad_in, tape)):
                _accumulate(src, gi, tape, c.module)
        for scope in tape.scopes.get(c.index, ()):
            scope.fire()                    # a model's backward hooks, at its first call
    if not need_grad_in or not tape.inputs:
        return None
    out = tuple(_input_grad(inp, later[inp.index]) for inp in tape.inputs)
    return out[0] if len(out) == 1 else out


def _reads_only_the_input(c, need_grad_in) -> bool:
    """A call whose one input is the model's input, by a layer that can skip dL/dx: its
    parameter gradients are added now, dL/dx only if someone reads it (training never
    does; a layer with backward hooks computes it now, for the hooks to see it)."""
    return (len(c.sources) == 1 and type(c.sources[0]) is Input and c.module.can_skip_grad_in
            and not (need_grad_in and c.module._backward_hooks))


def _one_per_input(c, grad_in, tape):
    """A layer's backward returns dL/dx for one input, a tuple for several."""
    if len(c.sources) == 1:
        return (grad_in,)
    if not isinstance(grad_in, tuple) or len(grad_in) != len(c.sources):
        raise ValueError(f"{type(tape.model).__name__}.backward: {tape.name(c.module)}."
                         f"backward must return one gradient per input ({len(c.sources)}), "
                         f"got {type(grad_in).__name__}")
    return grad_in


def _run_backward(c, g, need_grad_in=True):
    """Give the layer its saved state back, run its backward, take the state away."""
    module = c.module
    d = module.__dict__
    previous, d["_cache"] = d.get("_cache"), c.saved
    c.saved = None
    _local.call = c
    try:
        if need_grad_in:
            return module.backward(g)
        return module.backward(g, need_grad_in=False)
    finally:
        d["_cache"] = previous
        _local.call = None


def _accumulate(src, g, tape, module):
    """src.grad += g: the gradient ``g`` that ``module``'s backward gave its input made by
    ``src`` (a Call or an Input).  A value used twice collects both gradients."""
    if src is None or g is None:            # an input that carries no gradient
        return
    if type(g) is not np.ndarray:
        g = g.view(np.ndarray) if isinstance(g, np.ndarray) else g
    if not isinstance(g, np.ndarray) or g.shape != src.shape:
        got = g.shape if isinstance(g, np.ndarray) else type(g).__name__
        who = "grad_out" if module is None else f"{tape.name(module)}.backward"
        raise ValueError(f"{type(tape.model).__name__}.backward: {who} returned a gradient "
                         f"of shape {got} for an input of shape {tuple(src.shape)}")
    src.grad = g if src.grad is None else src.grad + g


def _match_grad_out(tape, grad_out, name):
    """grad_out, one array per output, each of its output's shape and dtype."""
    sources = tape.out_sources
    grads = (grad_out,) if tape.out_single else grad_out
    if not isinstance(grads, (tuple, list)) or len(grads) != len(sources):
        raise ValueError(f"{name}.backward: the forward returned {len(sources)} outputs; "
                         f"grad_out must be a tuple of as many arrays")
    out = []
    for i, (src, g) in enumerate(zip(sources, grads)):
        g = realize(g)
        if src is None:
            out.append(None)
            continue
        if not isinstance(g, np.ndarray):
            raise ValueError(f"{name}.backward: grad_out must be a numpy array, got "
                             f"{type(g).__name__}")
        if g.shape != tuple(src.shape):
            raise ValueError(f"{name}.backward: grad_out has shape {g.shape}, expected "
                             f"{tuple(src.shape)} (the shape of the forward output)")
        if g.dtype != src.dtype:
            raise ValueError(f"{name}.backward: grad_out is {g.dtype}, expected {src.dtype}")
        out.append(g.view(np.ndarray) if isinstance(g, Tensor) else g)
    return out


def _input_grad(inp, lazy):
    """dL/d(input): what the replay added, plus the deferred part, computed when read."""
    eager = inp.grad
    inp.grad = None
    if not lazy:
        return np.zeros(inp.shape, inp.dtype) if eager is None else eager

    def compute():
        total = eager
        for module, saved, g in lazy:
            gi = _input_grad_of(module, saved, g)
            total = gi if total is None else total + gi
        return total
    return Deferred(inp.shape, inp.dtype, compute,
                    about=f"dL/d(input {inp.index}), computed when first read")


def _input_grad_of(module, saved, g):
    """Run a layer's backward once more for dL/dx alone: its parameter gradients were
    added by the replay, so this time they go to scratch arrays."""
    mods = list(module.modules())
    kept = [(m, m.__dict__["grads"], m.__dict__.get("_cache")) for m in mods]
    for m in mods:
        m.__dict__["grads"] = {k: np.zeros_like(v) for k, v in m.grads.items()}
    module.__dict__["_cache"] = saved
    _local.muted = True                        # the hooks saw this backward already
    try:
        return module.backward(g)
    finally:
        _local.muted = False
        for m, grads, cache in kept:
            m.__dict__["grads"] = grads
            m.__dict__["_cache"] = cache
