"""The book renders from the stored notebooks with warnings as errors (what `make book` does)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stabilitylab import book

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_book_renders_with_warnings_as_errors(tmp_path):
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    if not jupyter_book.exists():
        jupyter_book = shutil.which("jupyter-book")
    assert jupyter_book, "jupyter-book is not installed (pip install -e .[book])"
    result = subprocess.run(
        [str(jupyter_book), "build", str(ROOT), "--path-output", str(tmp_path), "-W", "-n", "--keep-going"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    html = tmp_path / "_build" / "html"
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
