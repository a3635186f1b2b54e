"""Keep the code in the docs true: quoted source, runnable examples and their printed output.

The pages under docs/ (and README.md) hold three kinds of fenced block that tests/test_docs.py
checks, and that this script can bring up to date:

1. **Quoted source.**  An HTML comment naming a function, class or method, right before a
   ```python block::

       <!-- source: npnet/layers/conv.py Conv2d.backward -->
       ```python
       def backward(self, grad_out, need_grad_in=True):
           ...
       ```

   The block must equal that object's current source, dedented (decorators included).
   It is shown, never run.  When the code changes, ``python docs/sync.py`` rewrites it.

2. **Runnable examples.**  Every other ```python block runs, in order; the blocks of one page
   share their variables, as cells of a notebook do.  Each page runs in a fresh temporary
   directory.  ``<!-- norun: reason -->`` right before a block shows it without running it
   (the reason is required).

3. **Printed output.**  A ```text block right after a ```python block (blank lines between
   are allowed) is what that block prints: the test compares it with the real output, so a
   number in a worked example cannot drift from what npnet computes.  ``...`` in it matches
   any text (as doctest's ELLIPSIS), for the few values that differ from run to run.  A block
   that prints must show its output.

Usage (from the repository root)::

    python docs/sync.py              # rewrite quoted-source blocks that are out of date
    python docs/sync.py --check      # only report them; exit status 1 if any
    python docs/sync.py --outputs    # also run the pages and rewrite the output blocks
                                     #   that differ (or are missing): review the diff!
    python docs/sync.py docs/layers/conv.md   # only these pages
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import io
import os
import re
import sys
import tempfile
import textwrap
import types
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)\s*$")
MARKER = re.compile(r"^<!--\s*(source|norun)\s*:\s*(.*?)\s*-->\s*$")


# -- reading a page ------------------------------------------------------------------------
@dataclass
class Block:
    """A fenced block: lines[start] is the opening fence, lines[end] the closing one."""
    lang: str
    start: int
    end: int
    body: str
    source: tuple | None = None      # (path, qualname) for quoted source
    norun: str | None = None         # the reason, for a block shown but not run
    output: "Block | None" = None    # the ```text block showing what this block prints
    is_output: bool = False

    @property
    def runs(self) -> bool:
        return self.lang == "python" and self.source is None and self.norun is None

    @property
    def line(self) -> int:
        """1-based line number of the first line of code."""
        return self.start + 2


@dataclass
class Page:
    path: Path
    lines: list
    blocks: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    @property
    def name(self) -> str:
        try:
            return str(self.path.relative_to(ROOT))
        except ValueError:
            return str(self.path)


def parse(path: Path, text: str | None = None) -> Page:
    """Split a markdown page into its fenced blocks, with their markers and outputs."""
    text = path.read_text(encoding="utf-8") if text is None else text
    page = Page(path, text.split("\n"))
    lines = page.lines
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        ticks, lang = m.group(1), m.group(2).lower()
        j = i + 1
        while j < len(lines) and not re.match(rf"^{ticks}`*\s*$", lines[j]):
            j += 1
        if j == len(lines):
            page.problems.append(f"{page.name}:{i + 1}: code fence never closed")
            break
        block = Block(lang, i, j, "\n".join(lines[i + 1:j]))
        prev = _previous_nonblank(lines, i)
        marker = MARKER.match(lines[prev]) if prev is not None else None
        if marker and marker.group(1) == "source":
            parts = marker.group(2).split()
            if len(parts) != 2:
                page.problems.append(f"{page.name}:{prev + 1}: write the marker as "
                                     "<!-- source: path/to/file.py Qualified.name -->")
            else:
                block.source = (parts[0], parts[1])
        elif marker and marker.group(1) == "norun":
            if not marker.group(2):
                page.problems.append(f"{page.name}:{prev + 1}: <!-- norun: ... --> needs a "
                                     "reason")
            block.norun = marker.group(2) or "?"
        if (lang == "text" and page.blocks and page.blocks[-1].runs
                and prev == page.blocks[-1].end):
            block.is_output = True
            page.blocks[-1].output = block
        if (marker and lang != "python") or (block.source and block.norun):
            page.problems.append(f"{page.name}:{i + 1}: a source or norun marker must come "
                                 "right before a ```python block")
        page.blocks.append(block)
        i = j + 1
    return page


def _previous_nonblank(lines, i):
    k = i - 1
    while k >= 0 and not lines[k].strip():
        k -= 1
    return k if k >= 0 else None


# -- quoted source -------------------------------------------------------------------------
def source_of(path: str, qualname: str, root: Path = ROOT) -> str:
    """The source of ``qualname`` (e.g. 'Conv2d.backward') in the file ``path``, dedented.

    Read with ``ast`` from the file as it is now on disk, nothing imported: the same text
    as ``textwrap.dedent(inspect.getsource(obj))``, decorators included.
    """
    file = root / path
    if not file.is_file():
        raise LookupError(f"{path}: no such file")
    text = file.read_text(encoding="utf-8")
    nodes = ast.parse(text).body
    node = None
    for part in qualname.split("."):
        node = next((n for n in nodes if isinstance(
            n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == part), None)
        if node is None:
            raise LookupError(f"{path}: no function or class {qualname!r}")
        nodes = node.body
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    lines = text.split("\n")[first - 1:node.end_lineno]
    return textwrap.dedent("\n".join(lines)).rstrip()


def stale_sources(page: Page) -> list:
    """[(block, current source or None, error)] for every quoted block that is out of date."""
    out = []
    for b in page.blocks:
        if b.source is None:
            continue
        try:
            current = source_of(*b.source)
        except (LookupError, SyntaxError) as err:
            out.append((b, None, str(err)))
            continue
        if b.body.rstrip() != current:
            out.append((b, current, None))
    return out


# -- running the examples ------------------------------------------------------------------
@dataclass
class Run:
    """The outcome of one runnable block: what it printed, or the error it raised."""
    block: Block
    stdout: str
    error: str | None = None


def run_page(page: Page, workdir: str | os.PathLike | None = None) -> list:
    """Run the page's python blocks in order in one namespace; stop at the first error.

    The code is compiled with its real line numbers and the page's path, so a traceback
    points at the line of the markdown file.
    """
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))              # npnet importable from any directory
    module = types.ModuleType(f"docs_page_{abs(hash(page.name))}")
    module.__file__ = str(page.path)
    sys.modules[module.__name__] = module          # dataclasses and pickling look it up
    runs = []
    old_cwd = os.getcwd()
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="npnet-docs-")
        workdir = tmp.name
    try:
        os.chdir(workdir)
        for block in page.blocks:
            if not block.runs:
                continue
            buf = io.StringIO()
            try:
                tree = ast.parse(block.body, filename=str(page.path))
                ast.increment_lineno(tree, block.line - 1)
                code = compile(tree, str(page.path), "exec")
                with contextlib.redirect_stdout(buf):
                    exec(code, module.__dict__)
            except BaseException as err:           # noqa: BLE001 - reported, not hidden
                if isinstance(err, KeyboardInterrupt):
                    raise
                import traceback
                tb = "".join(traceback.format_exception(err))
                runs.append(Run(block, buf.getvalue(), tb))
                break
            runs.append(Run(block, buf.getvalue()))
    finally:
        os.chdir(old_cwd)
        sys.modules.pop(module.__name__, None)
        if tmp is not None:
            tmp.cleanup()
    return runs


def normalise(text: str) -> str:
    """Drop trailing spaces on each line and blank lines at both ends."""
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n")).strip("\n")


def output_matches(expected: str, actual: str) -> bool:
    expected, actual = normalise(expected), normalise(actual)
    if "..." not in expected:
        return expected == actual
    pattern = r"[\s\S]*?".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, actual) is not None


def diff(expected: str, actual: str) -> str:
    return "\n".join(difflib.unified_diff(
        normalise(expected).split("\n"), normalise(actual).split("\n"),
        "in the page", "printed now", lineterm=""))


# -- rewriting -----------------------------------------------------------------------------
def _replace_blocks(lines: list, edits: list) -> list:
    """edits: [(first line, last line, new lines)], applied from the bottom up."""
    lines = list(lines)
    for first, last, new in sorted(edits, key=lambda e: e[0], reverse=True):
        lines[first:last + 1] = new
    return lines


def sync_page(page: Page, outputs: bool = False) -> tuple[str, list]:
    """-> (new text of the page, list of messages about what changed)."""
    edits, notes = [], []
    for b, current, error in stale_sources(page):
        if error:
            notes.append(f"{page.name}:{b.start + 1}: cannot quote: {error}")
            continue
        edits.append((b.start, b.end,
                      [page.lines[b.start], *current.split("\n"), page.lines[b.end]]))
        notes.append(f"{page.name}:{b.start + 1}: re-quoted {b.source[0]} {b.source[1]}")
    if outputs:
        for run in run_page(page):
            b = run.block
            if run.error:
                notes.append(f"{page.name}:{b.line}: the block raised; outputs after it "
                             f"are left as they are:\n{run.error}")
                break
            printed = normalise(run.stdout)
            if b.output is not None and not output_matches(b.output.body, run.stdout):
                edits.append((b.output.start + 1, b.output.end - 1, printed.split("\n")))
                notes.append(f"{page.name}:{b.output.start + 1}: rewrote the output")
            elif b.output is None and printed:
                edits.append((b.end, b.end, [page.lines[b.end], "", "```text",
                                             *printed.split("\n"), "```"]))
                notes.append(f"{page.name}:{b.end + 1}: added the output")
    return "\n".join(_replace_blocks(page.lines, edits)), notes


def pages(paths=None) -> list:
    """The pages checked: every .md under docs/, and README.md when it exists."""
    if paths:
        return [Path(p).resolve() for p in paths]
    found = sorted((ROOT / "docs").rglob("*.md"))
    readme = ROOT / "README.md"
    return found + ([readme] if readme.is_file() else [])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Re-quote the source shown in the docs, and "
                                 "optionally refresh the printed outputs.")
    ap.add_argument("pages", nargs="*", help="markdown files (default: docs/**/*.md, "
                    "README.md)")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a "
                    "quoted block is out of date")
    ap.add_argument("--outputs", action="store_true", help="also run the python blocks "
                    "and rewrite their ```text outputs")
    args = ap.parse_args(argv)
    status = 0
    for path in pages(args.pages):
        page = parse(path)
        for problem in page.problems:
            print(problem)
            status = 1
        if args.check:
            for b, _, error in stale_sources(page):
                print(f"{page.name}:{b.start + 1}: out of date: {b.source[0]} "
                      f"{b.source[1]}" + (f" ({error})" if error else ""))
                status = 1
            continue
        text, notes = sync_page(page, outputs=args.outputs)
        for note in notes:
            print(note)
        if text != "\n".join(page.lines):
            path.write_text(text, encoding="utf-8")
    if status and args.check:
        print("run: python docs/sync.py")
    return status


if __name__ == "__main__":
    sys.exit(main())
