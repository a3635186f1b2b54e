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
import pytest
from numba.core.caching import NullCache
from numba.core.registry import CPUDispatcher

import npnet
from npnet.kernels import warm

ROOT = Path(__file__).resolve().parents[2]

# Counts, in a new process, what it compiles: npnet's Python files compiled from source
# (none if their bytecode was read from the cache Python keeps for them), and Numba's
# compilations, one per kernel signature (nested helpers count too; none if all cached).
COUNT = textwrap.dedent("""
    import importlib.machinery
    import os
    import sys
    from numba.core import event

    sources, compiled = [], []
    PACKAGE = os.path.join(os.getcwd(), "npnet", "")      # the process runs in the root
    _to_code = importlib.machinery.SourceFileLoader.source_to_code

    def source_to_code(self, data, path, *args, **kwargs):
        if str(path).startswith(PACKAGE):
            sources.append(str(path))
        return _to_code(self, data, path, *args, **kwargs)

    importlib.machinery.SourceFileLoader.source_to_code = source_to_code

    class Count(event.Listener):
        def on_start(self, ev):
            compiled.append(f"{ev.data['dispatcher'].py_func.__qualname__}{ev.data['args']}")

        def on_end(self, ev):
            pass

    event.register("numba:compile", Count())
""")

# The main job's first epoch of each model named on the command line.
MAIN_JOB = COUNT + textwrap.dedent("""
    sys.path.insert(0, "examples")
    import train_lenet
    for model in sys.argv[2:]:
        train_lenet.main(["--model", model, "--limit", "256", "--eval-limit", "256",
                          "--epochs", "1", "--no-plots", "--no-progress",
                          "--out", f"{sys.argv[1]}/{model}"])
    print(len(sources), len(compiled))
    print("\\n".join(sources + compiled), file=sys.stderr)
""")


def _run(args, cache, cwd=ROOT, pycache=None, **kw):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    if pycache is not None:     # bytecode only where the warm-up writes it (or nowhere)
        env.update(PYTHONPYCACHEPREFIX=str(pycache), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600, **kw)


def test_after_warm_the_main_job_compiles_nothing(tmp_path):
    """Neither npnet's Python files nor its kernels: with PYTHONDONTWRITEBYTECODE set (as
    on CI), only the warm-up writes npnet's bytecode, into a directory of this test's."""
    cache, pycache = tmp_path / "numba-cache", tmp_path / "pycache"
    r = _run(["-m", "npnet.kernels.warm"], cache, pycache=pycache)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("npnet bytecode and kernels compiled and cached in "), r.stdout
    assert any(cache.rglob("*.nbc")), "the warm-up wrote nothing to Numba's cache"
    # every model the main job trains (its --model choices), each at its own recipe's batch
    job = _run(["-c", MAIN_JOB, str(tmp_path / "runs"), "lenet5", "lenet5_classic",
                "resnet"], cache, pycache=pycache)
    assert job.returncode == 0, job.stderr
    sources, kernels = map(int, job.stdout.strip().splitlines()[-1].split())
    assert (sources, kernels) == (0, 0), (
        f"the main job compiled {sources} of npnet's Python files and {kernels} kernel "
        f"signatures that the warm-up did not cache:\n{job.stderr}")


def test_without_warm_a_new_process_compiles_npnet_from_source(tmp_path):
    """The other side of the test above: the count sees npnet's files compiled when no
    bytecode was written for them."""
    r = _run(["-c", COUNT + "import npnet\nprint(len(sources))"], tmp_path / "numba-cache",
             pycache=tmp_path / "pycache", check=True)
    assert int(r.stdout.split()[-1]) >= 20          # npnet's modules, each compiled


def test_warm_stops_with_one_line_when_the_bytecode_cannot_be_written(monkeypatch, capsys):
    monkeypatch.setattr(warm.compileall, "compile_dir", lambda *args, **kwargs: False)
    monkeypatch.setattr(warm, "warm", lambda: pytest.fail("the kernels were compiled anyway"))
    assert warm.main([]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not write the bytecode" in err


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
