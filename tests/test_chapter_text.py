"""What a reader sees in a chapter: code that fits the page, math that Markdown cannot break,
numbered and captioned figures, numbers glued from the outputs, a summary and exercises.

These read the stored notebooks; the browser test (test_book_pages.py) checks the rendered pages.
"""

import re
from pathlib import Path

import nbformat
import pytest

from stabilitylab import book

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = book.chapters(ROOT)
PAGE_WIDTH = 80  # characters of code or printed output that fit the page column

# Decimal numbers a chapter's prose may write without gluing them from an output (constants of
# the mathematics or of the method, values a reader picks in an exercise) are listed, each with
# its reason, in tests/prose_numbers/<chapter>.txt: one "number  # reason" per line.
ALLOWED_DIR = Path(__file__).resolve().parent / "prose_numbers"


def allowed_numbers(stem: str) -> dict[str, str]:
    path = ALLOWED_DIR / f"{stem}.txt"
    if not path.is_file():
        return {}
    allowed = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        number, _, reason = line.partition("#")
        assert reason.strip(), f"{path.name}: {number.strip()} needs a reason after '#'"
        allowed[number.strip()] = reason.strip()
    return allowed


def _chapter_id(path: Path) -> str:
    return path.stem


def _cells(path: Path, kind: str):
    notebook = nbformat.read(path, as_version=4)
    return [c for c in notebook.cells if c.cell_type == kind]


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _visible_code_cells(path: Path):
    return [c for c in _cells(path, "code") if "remove-cell" not in _tags(c)]


def _strip_fences(text: str) -> str:
    return re.sub(r"^```[^\n]*\n.*?^```[ \t]*$", "", text, flags=re.S | re.M)


def _fenced_code(text: str) -> list[str]:
    blocks = re.findall(r"^```(python|py|bash)?[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.S | re.M)
    return [code for _, code in blocks]


chapter_params = pytest.mark.parametrize("chapter", CHAPTERS, ids=_chapter_id)


@chapter_params
def test_code_and_printed_results_fit_the_page(chapter):
    too_wide = []
    for cell in _visible_code_cells(chapter):
        for line in cell.source.splitlines():
            if len(line) > PAGE_WIDTH:
                too_wide.append(f"code ({len(line)}): {line}")
        if "remove-output" in _tags(cell):
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stdout":
                text = out.get("text", "")
            elif out.get("output_type") in ("execute_result", "display_data"):
                data = out.get("data", {})
                if "text/html" in data or "image/png" in data or "image/svg+xml" in data:
                    continue
                text = data.get("text/plain", "")
            else:
                continue
            for line in "".join(text).splitlines():
                if len(line) > PAGE_WIDTH:
                    too_wide.append(f"output ({len(line)}): {line}")
    for cell in _cells(chapter, "markdown"):
        for code in _fenced_code(cell.source):
            for line in code.splitlines():
                if len(line) > PAGE_WIDTH:
                    too_wide.append(f"code in the text ({len(line)}): {line}")
    assert not too_wide, f"lines wider than {PAGE_WIDTH} characters:\n" + "\n".join(too_wide)


def test_one_output_box_per_printed_result():
    """The runner joins what a cell printed: no cell of a stored chapter holds two consecutive
    standard-output boxes (they render as separate boxes)."""
    split = []
    for chapter in CHAPTERS:
        for i, cell in enumerate(_cells(chapter, "code")):
            kinds = [
                (o.get("output_type"), o.get("name")) for o in cell.get("outputs", [])
            ]
            if any(a == b == ("stream", "stdout") for a, b in zip(kinds, kinds[1:])):
                split.append(f"{chapter.stem}: code cell {i}")
    assert not split, split


MATH_SPANS = [
    re.compile(r"\$\$.*?\$\$", re.S),
    re.compile(r"(?<![\\$])\$(?!\$).*?(?<![\\$])\$", re.S),
    re.compile(r"\\begin\{([a-zA-Z*]+)\}.*?\\end\{\1\}", re.S),
]
# A line that Markdown reads as a block quote, a list item or a heading.
MARKDOWN_BLOCK_START = re.compile(r"^\s*(>|[-+*](\s|$)|\d+[.)](\s|$)|#)")


def math_lines_markdown_would_break(text: str) -> list[str]:
    """Lines inside a math span (not its first line) that Markdown would parse as block
    structure before the math is seen."""
    text = _strip_fences(text)
    text = re.sub(r"`[^`\n]*`", "", text)
    broken = []
    for pattern in MATH_SPANS:
        for match in pattern.finditer(text):
            for line in match.group(0).splitlines()[1:]:
                if MARKDOWN_BLOCK_START.match(line):
                    broken.append(line.strip())
    return broken


def test_the_math_check_catches_the_traps():
    assert math_lines_markdown_would_break("$$\na\n- b\n$$") == ["- b"]
    assert math_lines_markdown_would_break("text $a\n> b$ text") == ["> b$"]
    assert math_lines_markdown_would_break("$$\na\n+ b\n$$") == ["+ b"]
    assert math_lines_markdown_would_break("$$\na\n\\quad - b\n$$") == []
    assert math_lines_markdown_would_break("- item $a$\n- item $b$") == []


@chapter_params
def test_no_math_line_reads_as_markdown_structure(chapter):
    broken = [
        line for cell in _cells(chapter, "markdown")
        for line in math_lines_markdown_would_break(cell.source)
    ]
    assert not broken, "math lines that start like a quote or a list item:\n" + "\n".join(broken)


@chapter_params
def test_parameters_cell_then_a_hidden_configuration(chapter):
    code = _cells(chapter, "code")
    parameters = [c for c in code if "parameters" in _tags(c)]
    assert len(parameters) == 1, "one cell tagged 'parameters'"
    lines = [line for line in parameters[0].source.splitlines() if line.strip()]
    assert re.fullmatch(r'SCALE = "auto"\s*#.*', lines[0]) or (
        lines[0] == 'SCALE = "auto"' and len(lines) == 2 and lines[1].lstrip().startswith("#")
    ), "the parameters cell is SCALE = \"auto\" and one comment saying what the scales are"
    assert all(s in parameters[0].source for s in ("tiny", "small", "full")), parameters[0].source
    assert len(lines) <= 2, parameters[0].source
    configs = [c for c in code if "config(" in c.source]
    assert configs, "no config(...) cell"
    for cell in configs:
        assert "hide-input" in _tags(cell), "the config(...) cell must be tagged hide-input"


def _figure_cells(chapter: Path):
    return [
        c for c in _cells(chapter, "code")
        if "remove-output" not in _tags(c) and "remove-cell" not in _tags(c)
        and any("image/png" in o.get("data", {}) or "image/svg+xml" in o.get("data", {})
                for o in c.get("outputs", []))
    ]


@chapter_params
def test_figures_are_numbered_captioned_and_referenced(chapter):
    prose = "\n".join(c.source for c in _cells(chapter, "markdown"))
    figures = _figure_cells(chapter)
    assert figures, "a chapter shows at least one figure"
    for cell in figures:
        figure = cell.get("metadata", {}).get("mystnb", {}).get("figure", {})
        first = cell.source.splitlines()[0]
        assert figure.get("caption", "").strip(), f"figure without a caption, cell {first!r}"
        name = figure.get("name", "")
        assert re.fullmatch(r"fig-[a-z0-9-]+", name), f"figure label {name!r}, cell {first!r}"
        assert re.search(r"\{numref\}`[^`]*" + re.escape(name) + r">?`", prose), (
            f"figure {name} is never referenced from the prose with {{numref}}"
        )
        pngs = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        assert len(pngs) <= 1, f"one figure per cell, cell {first!r} shows {len(pngs)}"
        for out in pngs:
            assert out.get("metadata", {}).get("image/png", {}).get("width"), (
                f"figure not stored at retina resolution, cell {first!r}"
            )


GLUE_ROLE = re.compile(r"\{glue(:text|:md|:any)?\}`[^`]*`")
DECIMAL = re.compile(r"(?<![\w.])[-+]?\d+\.\d+(?![\w.])")


def unglued_decimals(text: str) -> list[str]:
    """Decimal numbers in Markdown that are not pasted by a glue role (code and labels left out)."""
    text = _strip_fences(text)
    text = GLUE_ROLE.sub("", text)
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code, references, roles' targets
    text = re.sub(r"^:(label|name|class):.*$", "", text, flags=re.M)
    return [m.group(0).lstrip("+-") for m in DECIMAL.finditer(text)]


def test_the_number_check_sees_through_glue():
    assert unglued_decimals("accuracy {glue:text}`acc:.3f` at $r = 0.5$") == ["0.5"]
    assert unglued_decimals("see `x = 0.3` and {numref}`fig-1`") == []
    assert unglued_decimals("```python\nx = 0.25\n```\n") == []


@chapter_params
def test_numbers_in_the_prose_are_glued_from_the_outputs(chapter):
    allowed = allowed_numbers(chapter.stem)
    found = [
        number for cell in _cells(chapter, "markdown") for number in unglued_decimals(cell.source)
    ]
    unexplained = sorted({n for n in found if n not in allowed})
    assert not unexplained, (
        "decimal numbers in the prose that are neither glued ({glue:text}`name:.3f`) nor listed "
        f"in tests/prose_numbers/{chapter.stem}.txt with a reason: {unexplained}"
    )


@chapter_params
def test_chapter_has_a_label_a_summary_and_exercises(chapter):
    markdown = [c.source for c in _cells(chapter, "markdown")]
    assert markdown[0].startswith(f"(ch-{chapter.stem.split('_', 1)[1].replace('_', '-')})="), (
        "the first line labels the chapter for {numref}: (ch-<slug>)="
    )
    prose = "\n".join(markdown)
    headings = re.findall(r"^## (.+)$", prose, flags=re.M)
    assert "Summary" in headings and "Exercises" in headings, headings
    assert headings.index("Summary") < headings.index("Exercises"), headings
    summary = prose.split("## Summary", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in summary.splitlines() if line.strip()]
    assert 3 <= len(lines) <= 8, f"the summary is about five lines, found {len(lines)}"
    exercises = re.findall(r":::\{exercise\}.*?:::", prose, flags=re.S)
    assert len(exercises) >= 2, "at least two exercises"
    assert any("predict" in e.lower() for e in exercises), (
        "at least one exercise asks the reader to change the experiment and predict the result"
    )
    solutions = re.findall(r":::\{solution\}", prose)
    assert len(solutions) >= len(exercises), "every exercise has a solution"


@chapter_params
def test_chapters_are_referenced_by_label_not_by_a_written_number(chapter):
    """Chapter numbers come from the table of contents: prose refers to another chapter with
    {numref}`Chapter %s <ch-slug>`, so the numbers follow when a chapter is inserted."""
    prose = "\n".join(_strip_fences(c.source) for c in _cells(chapter, "markdown"))
    prose = re.sub(r"\{numref\}`[^`]*`", "", prose)
    written = re.findall(r"[Cc]hapters? \d+", prose)
    assert not written, f"chapter numbers written by hand: {written}"
