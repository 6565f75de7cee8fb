"""The book renders from the stored notebooks with warnings as errors (what `make book` does),
and every page reads as it should in a real browser with the network off.

The browser is Debian's chromium driven by Selenium (see tests/browser.py). A screenshot of every
page is saved under _build/screenshots/. Set STABILITYLAB_SKIP_BROWSER=1 to skip the browser part
on a machine without Chromium (CI never does).
"""

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import browser
from stabilitylab import book

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "_build" / "screenshots"
API_MODULES = [p.stem for p in sorted((ROOT / "book" / "api").glob("*.md")) if p.stem != "index"]


def _toc_pages() -> list[str]:
    """Every page of the table of contents, as a path relative to the HTML root."""
    entries = book._toc_files(book._load_yaml(ROOT / "_toc.yml"))
    return [str(Path(entry).with_suffix(".html")) for entry in entries]


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> Path:
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    if not jupyter_book.exists():
        jupyter_book = shutil.which("jupyter-book")
    assert jupyter_book, "jupyter-book is not installed (pip install -e .[book])"
    out = tmp_path_factory.mktemp("book")
    result = subprocess.run(
        [str(jupyter_book), "build", str(ROOT), "--path-output", str(out), "-W", "-n", "--keep-going"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out / "_build" / "html"


@pytest.fixture(scope="module")
def pages(html):
    """What Chromium shows of every page of the book, loaded offline; screenshots saved."""
    if os.environ.get("STABILITYLAB_SKIP_BROWSER"):
        pytest.skip("STABILITYLAB_SKIP_BROWSER is set")
    missing = browser.available()
    assert missing is None, (
        f"the page test needs {missing}: sudo apt-get install chromium chromium-driver, "
        "pip install -e .[test] (or set STABILITYLAB_SKIP_BROWSER=1 to skip it)"
    )
    if SCREENSHOTS.exists():
        shutil.rmtree(SCREENSHOTS)
    driver = browser.open_browser()
    try:
        return {page: browser.inspect_page(driver, html, page, SCREENSHOTS) for page in _toc_pages()}
    finally:
        driver.quit()


@pytest.mark.slow
def test_book_renders_with_warnings_as_errors(html):
    assert (html / "index.html").exists()
    for chapter in book.chapters(ROOT):
        page = html / chapter.relative_to(ROOT).with_suffix(".html")
        text = page.read_text(encoding="utf-8")
        assert "<img" in text, f"{page.name} shows no figure"
        assert "colab.research.google.com" in text, f"{page.name} has no Colab launch button"


def test_every_toc_entry_exists():
    assert book.chapters(ROOT), "no chapter in _toc.yml"
    for chapter in book.chapters(ROOT):
        assert chapter.is_file(), chapter


@pytest.mark.slow
def test_every_page_reads_offline(pages):
    """Math typeset by the local MathJax with no error, every image loaded, no traceback."""
    chapters = {str(c.relative_to(ROOT).with_suffix(".html")) for c in book.chapters(ROOT)}
    problems = []
    for page, report in pages.items():
        problems += report.problems(needs_math=page in chapters or report.formulas > 0)
        if page in chapters and report.formulas == 0:
            problems.append(f"{page}: no formula typeset")
    assert not problems, "\n".join(problems)
    assert all(r.screenshot and r.screenshot.is_file() for r in pages.values())


@pytest.mark.slow
def test_every_page_is_in_the_navigation(pages):
    toc = _toc_pages()
    for page, report in pages.items():
        linked = {
            os.path.normpath(os.path.join(os.path.dirname(page), href.split("#")[0]))
            for href in report.nav if href and not href.startswith(("http:", "https:"))
        } | {page}
        missing = [p for p in toc if p not in linked]
        assert not missing, f"{page}: the navigation lacks {missing}"


@pytest.mark.slow
def test_chapters_are_numbered_with_captioned_figures(html):
    for number, chapter in enumerate(book.chapters(ROOT), start=1):
        text = (html / chapter.relative_to(ROOT).with_suffix(".html")).read_text(encoding="utf-8")
        assert re.search(rf"<h1><span class=\"section-number\">{number}\. </span>", text), (
            f"{chapter.stem}: its title is not numbered {number}"
        )
        figures = re.findall(r"<figure.*?</figure>", text, flags=re.S)
        assert figures, f"{chapter.stem}: no numbered figure"
        for figure in figures:
            assert re.search(rf"Fig\. {number}\.\d+", figure), f"{chapter.stem}: unnumbered figure"
            assert re.search(r"<figcaption>.*\w+.*</figcaption>", figure, flags=re.S)
        # The chapter's own theorems and exercises (their titles), not references to other chapters'.
        own = r"caption-number\">(Theorem|Exercise|Definition|Proposition|Lemma) (\d+)\.(\d+)"
        assert re.findall(own, text), f"{chapter.stem}: no numbered theorem or exercise"
        for label in re.findall(own, text):
            assert int(label[1]) == number, f"{chapter.stem}: {' '.join(label)} numbered as another chapter"


@pytest.mark.slow
@pytest.mark.parametrize("module", API_MODULES)
def test_api_reference_documents_every_public_name(html, module):
    text = (html / "book" / "api" / f"{module}.html").read_text(encoding="utf-8")
    names = importlib.import_module(f"stabilitylab.{module}").__all__
    missing = [n for n in names if f'id="stabilitylab.{module}.{n}"' not in text]
    assert not missing, f"stabilitylab.{module}: not documented: {missing}"
    if module not in ("book", "plot"):
        assert "In the book:" in text, f"stabilitylab.{module}: no link to a chapter"


def test_every_module_has_an_api_page():
    import stabilitylab

    modules = [m for m in stabilitylab.__all__ if hasattr(getattr(stabilitylab, m), "__all__")]
    assert sorted(modules) == sorted(API_MODULES)
    assert set(f"book/api/{m}.html" for m in modules) <= set(_toc_pages())


def test_citation_keys_in_docstrings_are_in_the_bibliography():
    bib = (ROOT / "book" / "references.bib").read_text(encoding="utf-8")
    keys = set(re.findall(r"@\w+\{([^,\s]+),", bib))
    cited = set()
    for path in (ROOT / "stabilitylab").rglob("*.py"):
        cited |= set(re.findall(r"\[([a-z][a-z0-9_-]*\d{4}[a-z0-9_]*)\]", path.read_text(encoding="utf-8")))
    assert cited, "no citation found in the docstrings"
    assert not cited - keys, f"cited in docstrings, missing from references.bib: {sorted(cited - keys)}"
