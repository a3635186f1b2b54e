"""This checkout's npnet against an older copy: a worker script run under each, in turns.

A benchmark with ``--baseline DIR`` (a directory holding an older ``npnet`` package, e.g.
made with ``git archive <commit> npnet | tar -x -C DIR``) runs each measurement in a new
process whose ``PYTHONPATH`` and working directory are the code's own, so that ``import
npnet`` finds that copy, and lets the two codes take turns, the first of each round
alternating, so that both see the machine's load.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def codes(parser, baseline):
    """[(name, directory)]: this code, and the baseline if one was given (checked: a
    directory without an npnet package is a usage error of ``parser``)."""
    out = [("this code", ROOT)]
    if baseline:
        if not os.path.isdir(os.path.join(baseline, "npnet")):
            parser.error(f"--baseline {baseline}: no npnet package in that directory")
        out.append(("baseline", os.path.abspath(baseline)))
    return out


def in_turns(items, rounds):
    """Each of ``items`` (the codes compared here, bench_lenet.py's workers), ``rounds``
    times, rotating who goes first."""
    for r in range(rounds):
        k = r % len(items)
        yield from items[k:] + items[:k]


def run_worker(path, script, *args):
    """Run ``script`` (``python -c``) with ``args`` under the npnet in ``path``; return the
    JSON its last line of output holds."""
    env = dict(os.environ, PYTHONPATH=path)
    r = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env, cwd=path,
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])
