"""The docs cannot rot: every example runs, every printed number is checked, every quote of
npnet's source is the current source.

The conventions are described in docs/sync.py (which these tests use to read the pages):

* ``<!-- source: npnet/layers/conv.py Conv2d.backward -->`` before a ```python block: the
  block must equal that object's source; ``python docs/sync.py`` rewrites it.
* every other ```python block runs (one namespace per page, in order);
* a ```text block right after a ```python block is its printed output, compared exactly
  (``...`` matches anything).

Pages: every docs/**/*.md, and README.md when it exists.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("npnet_docs_sync", ROOT / "docs" / "sync.py")
sync = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = sync          # its dataclasses look their module up by name
_spec.loader.exec_module(sync)

LAYER_PAGES = ["linear", "conv", "maxpool", "avgpool", "activations", "flatten",
               "cross_entropy", "fused", "batchnorm", "dropout", "adaptive_avgpool"]
REQUIRED = ["docs/index.md", "docs/lenet5.md", "docs/autograd.md", "docs/functional.md"] + [
    f"docs/layers/{p}.md" for p in LAYER_PAGES]
PAGES = sync.pages()
IDS = [str(p.relative_to(ROOT)) for p in PAGES]


def test_the_required_pages_exist():
    missing = [p for p in REQUIRED if not (ROOT / p).is_file()]
    assert not missing, f"missing pages: {missing}"
    assert set(REQUIRED) <= set(IDS)
    readme = ROOT / "README.md"
    assert (str(readme.relative_to(ROOT)) in IDS) == readme.is_file()


@pytest.mark.parametrize("path", PAGES, ids=IDS)
def test_page_is_well_formed(path):
    page = sync.parse(path)
    assert not page.problems, "\n".join(page.problems)
    # a fence indented (say, in a list) would be skipped by the parser: refuse it
    indented = [i + 1 for i, line in enumerate(page.lines) if re.match(r"^\s+```", line)]
    assert not indented, f"{page.name}: indented code fences at lines {indented}; put " \
                         "code blocks at the start of the line"


@pytest.mark.parametrize("path", PAGES, ids=IDS)
def test_quoted_source_is_current(path):
    page = sync.parse(path)
    stale = sync.stale_sources(page)
    msgs = []
    for block, current, error in stale:
        where = f"{page.name}:{block.start + 1}: {block.source[0]} {block.source[1]}"
        if error:
            msgs.append(f"{where}: {error} (fix the marker)")
        else:
            msgs.append(f"{where} differs from the source:\n"
                        + sync.diff(block.body, current))
    assert not msgs, "quoted source is out of date; run python docs/sync.py\n\n" + \
        "\n\n".join(msgs)


@pytest.mark.parametrize("path", PAGES, ids=IDS)
def test_examples_run_and_print_what_the_page_shows(path):
    page = sync.parse(path)
    runs = sync.run_page(page)
    assert runs or not any(b.runs for b in page.blocks)
    for run in runs:
        b = run.block
        assert run.error is None, f"{page.name}:{b.line}: the example raised\n{run.error}"
        if b.output is None:
            assert not run.stdout.strip(), (
                f"{page.name}:{b.line}: the block prints but the page does not show it; "
                "add a ```text block after it (python docs/sync.py --outputs adds it):\n"
                + run.stdout)
        else:
            assert sync.output_matches(b.output.body, run.stdout), (
                f"{page.name}:{b.output.start + 1}: the output shown is not what the block "
                "prints now.  If the new output is right, run python docs/sync.py --outputs "
                "and review the diff.\n" + sync.diff(b.output.body, run.stdout))
    assert len(runs) == sum(b.runs for b in page.blocks)


@pytest.mark.parametrize("name", LAYER_PAGES)
def test_layer_pages_have_every_part(name):
    page = sync.parse(ROOT / "docs" / "layers" / f"{name}.md")
    text = "\n".join(page.lines)
    assert any(b.source for b in page.blocks), "quote the code that implements the layer"
    runnable = [b for b in page.blocks if b.runs]
    assert any("npnet.gradcheck(" in b.body for b in runnable), "a gradient check"
    assert any(b.output is not None for b in runnable), "a worked example with its output"
    assert "```math" in text or "$" in text, "the equations"
    for heading in ("## Forward", "## Backward", "## In the code", "## Worked example",
                    "## Gradient check"):
        assert heading in text, f"docs/layers/{name}.md: no '{heading}' section"


# -- GitHub rendering ----------------------------------------------------------------------
INLINE_MATH = re.compile(r"(?<![\\$])\$(?!\$)(.+?)(?<!\\)\$")


def _prose_lines(page):
    """(line number, text) outside fenced blocks, with `code spans` removed."""
    inside = set()
    for b in page.blocks:
        inside.update(range(b.start, b.end + 1))
    for i, line in enumerate(page.lines):
        if i not in inside:
            yield i + 1, re.sub(r"`[^`]*`", "", line)


def math_problems(page) -> list:
    """GitHub runs markdown before MathJax, so some TeX is eaten before it is typeset:
    ``\\_``, ``\\{``, ``\\\\`` and ``*`` inside $...$, and a ``_`` after a bracket (it
    can pair with another ``_`` as emphasis).  Display equations go in ```math blocks,
    which markdown leaves alone."""
    bad = []
    for n, line in _prose_lines(page):
        if "$$" in line:
            bad.append(f"{n}: use a ```math block instead of $$")
            continue
        spans = INLINE_MATH.findall(line)
        if line.replace("\\$", "").count("$") != 2 * len(spans):
            bad.append(f"{n}: unmatched $ (keep each $...$ on one line)")
        for m in spans:
            if m != m.strip():
                bad.append(f"{n}: ${m}$ must not start or end with a space")
            for bad_seq in ("\\_", "\\{", "\\}", "\\\\", "*"):
                if bad_seq in m:
                    bad.append(f"{n}: {bad_seq!r} inside ${m}$")
            if re.search(r"[^A-Za-z0-9]_", m):
                bad.append(f"{n}: '_' after a non-letter in ${m}$ (markdown may read "
                           "it as emphasis); use a ```math block or rewrite")
            if re.search(r"<[A-Za-z/!]", m):
                bad.append(f"{n}: '<' before a letter in ${m}$ reads as HTML; use \\lt")
            if line.lstrip().startswith("|") and "|" in m:
                bad.append(f"{n}: '|' inside ${m}$ in a table row; use \\vert")
    return bad


@pytest.mark.parametrize("path", PAGES, ids=IDS)
def test_math_avoids_what_github_misrenders(path):
    page = sync.parse(path)
    bad = math_problems(page)
    assert not bad, f"{page.name}:\n" + "\n".join(bad)


def test_the_math_rules_catch_what_they_should(tmp_path):
    page_path = tmp_path / "page.md"
    page_path.write_text(
        "Fine: $y_{n,o} = x W^\\top$ and `$not math_{x}$` in code.\n"
        "$$x$$\n"
        "$\\bar{X}_{i} = 1$ $a \\_ b$ $\\{1\\}$ $a * b$ $ x$ $a<b$\n"
        "| $\\lvert x \\rvert$ | $|x|$ |\n"
        "one $ alone\n"
        "```math\n\\bar{X}_{i} * \\{1\\}\n```\n")
    bad = math_problems(sync.parse(page_path))
    lines = [b.split(":")[0] for b in bad]
    assert sorted(set(lines)) == ["2", "3", "4", "5"], bad     # line 1 and the block: fine
    assert lines.count("3") == 8, bad      # X}_, \\_ (twice), \\{, \\}, *, space, <b


@pytest.mark.parametrize("path", PAGES, ids=IDS)
def test_links_resolve(path):
    page = sync.parse(path)
    bad = []
    for n, line in _prose_lines(page):
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if re.match(r"^(https?:|mailto:|#)", target):
                continue
            if not (path.parent / target.split("#")[0]).exists():
                bad.append(f"{n}: {target}")
    assert not bad, f"{page.name}: broken links\n" + "\n".join(bad)


def test_index_links_every_page():
    text = (ROOT / "docs" / "index.md").read_text()
    for p in REQUIRED[1:]:
        rel = str(Path(p).relative_to("docs"))
        assert f"]({rel})" in text, f"docs/index.md does not link {rel}"


# -- the tool itself -----------------------------------------------------------------------
def test_sync_requotes_stale_source_and_adds_outputs(tmp_path):
    page_path = tmp_path / "page.md"
    page_path.write_text(
        "Text.\n\n<!-- source: npnet/layers/flatten.py Flatten.backward -->\n```python\n"
        "def backward(self, grad_out):\n    return 'old'\n```\n\n"
        "```python\nx = 6 * 7\nprint(x)\n```\n\n"
        "```python\nprint(x + 1)\n```\n\n```text\n0\n```\n")
    page = sync.parse(page_path)
    assert [b.lang for b in page.blocks] == ["python", "python", "python", "text"]
    assert page.blocks[0].source == ("npnet/layers/flatten.py", "Flatten.backward")
    assert not page.blocks[0].runs and page.blocks[2].output is page.blocks[3]
    assert len(sync.stale_sources(page)) == 1
    text, notes = sync.sync_page(page, outputs=True)
    assert len(notes) == 3, notes
    page_path.write_text(text)
    page = sync.parse(page_path)
    assert sync.stale_sources(page) == []
    assert page.blocks[0].body == sync.source_of("npnet/layers/flatten.py", "Flatten.backward")
    assert [b.body for b in page.blocks if b.is_output] == ["42", "43"]


def test_source_of_matches_inspect():
    import inspect
    import textwrap

    import npnet
    from npnet.kernels import im2col as k
    assert sync.source_of("npnet/layers/conv.py", "Conv2d.backward") == \
        textwrap.dedent(inspect.getsource(npnet.Conv2d.backward)).rstrip()
    assert sync.source_of("npnet/kernels/im2col.py", "col2im") == \
        textwrap.dedent(inspect.getsource(k.col2im.py_func)).rstrip()
    with pytest.raises(LookupError):
        sync.source_of("npnet/layers/conv.py", "Conv2d.nope")


def test_output_matching():
    assert sync.output_matches("a\nb  \n\n", "\na\nb\n")
    assert not sync.output_matches("a\nb", "a\nc")
    assert sync.output_matches("rel err ...  ok", "rel err 3.1e-11  ok")
    assert not sync.output_matches("rel err ...  ok", "rel err 3.1e-11  FAIL")


def test_a_failing_example_is_reported_with_its_markdown_line(tmp_path):
    page_path = tmp_path / "page.md"
    page_path.write_text("# T\n\n```python\na = 1\n\nb = a / 0\n```\n")
    runs = sync.run_page(sync.parse(page_path))
    assert "ZeroDivisionError" in runs[0].error
    assert f'"{page_path}", line 6' in runs[0].error
