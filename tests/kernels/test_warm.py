"""npnet/kernels/warm.py: after it, the main job compiles nothing; and Numba's cache of a
kernel cannot go stale silently.

Each check runs in new processes with NUMBA_CACHE_DIR at an empty directory of its own, so
that what this test session (or a previous one) compiled cannot hide a missing signature.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
from numba.core.caching import NullCache
from numba.core.registry import CPUDispatcher

import npnet
from npnet.kernels import warm

ROOT = Path(__file__).resolve().parents[2]

# The main job's first epoch, in a process that counts Numba's compilations: one per
# kernel signature it had to compile (nested helpers count too), none if all were cached.
MAIN_JOB = textwrap.dedent("""
    import sys
    from numba.core import event

    compiled = []

    class Count(event.Listener):
        def on_start(self, ev):
            compiled.append(f"{ev.data['dispatcher'].py_func.__qualname__}{ev.data['args']}")

        def on_end(self, ev):
            pass

    event.register("numba:compile", Count())
    sys.path.insert(0, "examples")
    import train_lenet
    for model in sys.argv[2:]:
        train_lenet.main(["--model", model, "--limit", "256", "--eval-limit", "256",
                          "--epochs", "1", "--no-plots", "--no-progress",
                          "--out", f"{sys.argv[1]}/{model}"])
    print(len(compiled))
    print("\\n".join(compiled), file=sys.stderr)
""")


def _run(args, cache, cwd=ROOT, **kw):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600, **kw)


def test_after_warm_the_main_job_compiles_nothing(tmp_path):
    cache = tmp_path / "numba-cache"
    r = _run(["-m", "npnet.kernels.warm"], cache)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("npnet kernels compiled and cached in "), r.stdout
    assert any(cache.rglob("*.nbc")), "the warm-up wrote nothing to Numba's cache"
    # every model the main job trains (its --model choices), each at its own recipe's batch
    job = _run(["-c", MAIN_JOB, str(tmp_path / "runs"), "lenet5", "lenet5_classic",
                "resnet"], cache)
    assert job.returncode == 0, job.stderr
    n = int(job.stdout.strip().splitlines()[-1])
    assert n == 0, f"the main job compiled {n} kernel signatures the warm-up missed:\n" \
                   f"{job.stderr}"


def test_warm_covers_every_model_of_the_main_job(load_example):
    """The warm-up's list of models is the main job's --model choices (and the seed's
    class of the README), so that a model added to one is not forgotten in the other."""
    train = load_example("train_lenet")
    assert set(train.MODELS) <= set(warm.MODELS)
    assert all(callable(getattr(npnet.models, name)) for name in warm.MODELS)


def test_warm_takes_no_arguments(capsys):
    assert warm.main(["--fast"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'--fast'" in err


KERNEL = textwrap.dedent("""
    from numba import njit

    @njit(cache=True)
    def kernel(x):
        return x * {factor}
""")

CALL = "import kernel; print(kernel.kernel(2), sum(kernel.kernel.stats.cache_hits.values()))"


def test_editing_a_kernel_file_recompiles_it(tmp_path):
    """Numba keys a cache entry by its source file's modification time and size: a kernel
    whose file changed is compiled again, never loaded stale."""
    src, cache = tmp_path / "kernel.py", tmp_path / "numba-cache"
    src.write_text(KERNEL.format(factor=3))
    runs = [_run(["-c", CALL], cache, tmp_path, check=True).stdout.split() for _ in range(2)]
    assert runs == [["6", "0"], ["6", "1"]]              # compiled, then loaded
    src.write_text(KERNEL.format(factor=5))
    os.utime(src, ns=(1, 1))                              # another mtime even on a coarse clock
    assert _run(["-c", CALL], cache, tmp_path, check=True).stdout.split() == ["10", "0"]


def _cached_kernels():
    """Every Numba function npnet defines with cache=True, by its module."""
    import importlib
    import pkgutil
    found = []
    for info in pkgutil.walk_packages(npnet.__path__, "npnet."):
        if info.name.endswith("__main__"):
            continue                                     # a command line, not a library
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if isinstance(obj, CPUDispatcher) and not isinstance(obj._cache, NullCache) \
                    and obj.py_func.__module__ == info.name:
                found.append(obj)
    return found


def _numba_callees(fn):
    """The Numba functions ``fn``'s code names (its globals, nested code included)."""
    codes, names = [fn.__code__], set()
    while codes:
        code = codes.pop()
        names.update(code.co_names)
        codes.extend(c for c in code.co_consts if hasattr(c, "co_names"))
    return [fn.__globals__[n] for n in names
            if isinstance(fn.__globals__.get(n), numba.core.dispatcher.Dispatcher)]


def test_cached_kernels_call_numba_functions_of_their_own_file_only():
    """A cached kernel holds the compiled code of the Numba functions it calls, and Numba
    checks only the kernel's own file: were a callee in another file edited, the kernel
    would be loaded with the old callee, silently.  So callees live in the same file."""
    kernels = _cached_kernels()
    assert len(kernels) >= 20                            # the walk found npnet's kernels
    crossing = [f"{k.py_func.__module__}.{k.__name__} calls "
                f"{c.py_func.__module__}.{c.__name__}"
                for k in kernels for c in _numba_callees(k.py_func)
                if c.py_func.__code__.co_filename != k.py_func.__code__.co_filename]
    assert crossing == []
