"""npnet's Numba kernels (one module per kind), and ``compiles()``: how many Numba
compilations this process has run so far.

npnet/autograd.py reads the count to know whether a forward compiled something: a
compile leaves reference cycles behind (the typing errors Numba catches keep the frames
that were running, npnet's among them), and they can keep a deferred value alive that
nobody kept (``_Forward.finish``).
"""
from __future__ import annotations

from numba.core import event as _event

_compiled = 0


class _Count(_event.Listener):
    def on_start(self, ev):
        pass

    def on_end(self, ev):
        global _compiled
        _compiled += 1


_event.register("numba:compile", _Count())


def compiles() -> int:
    """Numba compilations run in this process (any function's, npnet's or not)."""
    return _compiled
