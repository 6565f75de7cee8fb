"""The chapter runner: scales, papermill runs that store only on success, and the integrity check."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from stabilitylab import book

URL = "https://example.org/someone/stabilitylab"


def _notebook(code_cells: list[str]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    setup = nbformat.v4.new_code_cell("# setup placeholder", metadata={"tags": ["remove-cell", "colab-setup"]})
    params = nbformat.v4.new_code_cell('SCALE = "auto"', metadata={"tags": ["parameters"]})
    nb.cells = [nbformat.v4.new_markdown_cell("# A chapter"), setup, params]
    nb.cells += [nbformat.v4.new_code_cell(src) for src in code_cells]
    return nb


@pytest.fixture
def tiny_book(tmp_path: Path) -> Path:
    (tmp_path / "book").mkdir()
    (tmp_path / "_config.yml").write_text(f"title: t\nrepository:\n  url: {URL}\n")
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n  - file: book/01_good\n  - file: book/02_broken\n"
    )
    (tmp_path / "book" / "intro.md").write_text("# Intro\n")
    good = _notebook(
        [
            "import os\nfrom stabilitylab.book import config\n"
            "cfg = config(SCALE, tiny={'n': 1}, small={'n': 2}, full={'n': 3})",
            "print('n =', cfg.n, 'scale =', cfg.scale)",
        ]
    )
    broken = _notebook(["x = 1", "raise RuntimeError('this chapter is broken')", "print('never')"])
    nbformat.write(good, tmp_path / "book" / "01_good.ipynb")
    nbformat.write(broken, tmp_path / "book" / "02_broken.ipynb")
    return tmp_path


def test_chapters_are_read_from_the_toc(tiny_book):
    assert [p.name for p in book.chapters(tiny_book)] == ["01_good.ipynb", "02_broken.ipynb"]
    assert book.resolve_chapters(["01"], tiny_book)[0].name == "01_good.ipynb"
    assert book.resolve_chapters(["broken"], tiny_book)[0].name == "02_broken.ipynb"
    assert book.resolve_chapters(["book/01_good.ipynb"], tiny_book)[0].name == "01_good.ipynb"
    with pytest.raises(ValueError, match="01_good, 02_broken"):
        book.resolve_chapters(["03_missing"], tiny_book)


def test_successful_run_stores_outputs_and_metadata(tiny_book):
    path = tiny_book / "book" / "01_good.ipynb"
    result = book.run_chapter(path, scale="small", root=tiny_book, progress=False, log=lambda _: None)
    assert result.scale == "small"
    nb = nbformat.read(path, as_version=4)
    meta = nb.metadata["stabilitylab"]
    assert set(book.METADATA_FIELDS) <= set(meta)
    assert meta["scale"] == "small" and meta["code_hash"] == book.code_hash(nb)
    assert meta["seconds"] >= 0 and meta["device"].startswith(("cpu", "cuda"))
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "n = 2 scale = small" in printed  # the scale reached the notebook's config
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    assert URL in nb.cells[1].source  # setup cell built from _config.yml
    assert not list((tiny_book / "book").glob(".*tmp*"))
    assert [p for p in book.check(tiny_book) if "01_good" in p] == []


def test_failing_run_leaves_the_stored_notebook_byte_identical(tiny_book):
    path = tiny_book / "book" / "02_broken.ipynb"
    before = path.read_bytes()
    with pytest.raises(book.ChapterError, match=r"02_broken failed in cell 4.*RuntimeError: this chapter is broken"):
        book.run_chapter(path, scale="tiny", root=tiny_book, progress=False, log=lambda _: None)
    assert path.read_bytes() == before
    assert sorted(p.name for p in (tiny_book / "book").iterdir()) == ["01_good.ipynb", "02_broken.ipynb", "intro.md"]


def test_check_catches_edits_missing_runs_and_errors(tiny_book):
    path = tiny_book / "book" / "01_good.ipynb"
    problems = book.check(tiny_book)
    assert any("01_good" in p and "not made by the runner" in p for p in problems)
    book.run_chapter(path, scale="tiny", root=tiny_book, progress=False, log=lambda _: None)
    assert not [p for p in book.check(tiny_book) if "01_good" in p]

    nb = nbformat.read(path, as_version=4)
    nb.cells[-1].source += "\nprint('edited')"
    nbformat.write(nb, path)
    assert any("01_good" in p and "code changed" in p for p in book.check(tiny_book))

    nb.cells[-1].source = nb.cells[-1].source.replace("\nprint('edited')", "")
    nb.cells[-1].outputs = [nbformat.v4.new_output("error", ename="E", evalue="v", traceback=[])]
    nbformat.write(nb, path)
    assert any("01_good" in p and "error output" in p for p in book.check(tiny_book))

    (tiny_book / "_config.yml").write_text("title: t\nrepository:\n  url: https://example.org/other\n")
    assert any("setup cell" in p for p in book.check(tiny_book))


def test_markdown_edits_do_not_invalidate_a_run(tiny_book):
    path = tiny_book / "book" / "01_good.ipynb"
    book.run_chapter(path, scale="tiny", root=tiny_book, progress=False, log=lambda _: None)
    nb = nbformat.read(path, as_version=4)
    nb.cells[0].source += "\n\nMore prose."
    nbformat.write(nb, path)
    assert not [p for p in book.check(tiny_book) if "01_good" in p]


def _cli(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "STABILITYLAB_SCALE"}
    return subprocess.run(
        [sys.executable, "-m", "stabilitylab.book", *args], cwd=cwd, capture_output=True, text=True, env=env
    )


def test_cli_exit_codes(tiny_book):
    unknown = _cli("run", "nope", cwd=tiny_book)
    assert unknown.returncode == 2 and "01_good, 02_broken" in unknown.stderr
    before = (tiny_book / "book" / "02_broken.ipynb").read_bytes()
    failed = _cli("run", "02", "--scale", "tiny", "--no-progress", cwd=tiny_book)
    assert failed.returncode == 1
    assert "02_broken failed in cell" in failed.stderr and "RuntimeError" in failed.stderr
    assert (tiny_book / "book" / "02_broken.ipynb").read_bytes() == before
    assert _cli("check", cwd=tiny_book).returncode == 1
    assert _cli("run", "01", "--scale", "tiny", "--no-progress", cwd=tiny_book).returncode == 0


def test_config_resolves_scales(monkeypatch):
    monkeypatch.delenv("STABILITYLAB_SCALE", raising=False)
    settings = dict(tiny={"n": 1}, small={"n": 2}, full={"n": 3}, verbose=False)
    assert book.config("tiny", **settings).n == 1
    cfg = book.config("auto", **settings)
    assert cfg.scale == ("full" if torch.cuda.is_available() else "small")
    assert cfg.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("STABILITYLAB_SCALE", "full")
    assert book.config("tiny", **settings).n == 3  # the environment overrides the notebook
    monkeypatch.setenv("STABILITYLAB_SCALE", "huge")
    with pytest.raises(ValueError, match="STABILITYLAB_SCALE"):
        book.config("tiny", **settings)


def test_config_rejects_bad_settings(monkeypatch):
    monkeypatch.delenv("STABILITYLAB_SCALE", raising=False)
    with pytest.raises(ValueError, match="SCALE"):
        book.config("medium", tiny={}, small={}, full={})
    with pytest.raises(ValueError, match=r"small lacks \['n'\]"):
        book.config("tiny", tiny={"n": 1}, small={}, full={"n": 3})
    with pytest.raises(ValueError, match="device"):
        book.config("tiny", tiny={"device": 1}, small={"device": 1}, full={"device": 1})
    with pytest.raises(TypeError, match="tiny"):
        book.config("tiny", tiny=[1], small={}, full={})


def test_setup_cell_installs_from_the_configured_repository():
    source = book.setup_cell_source(URL)
    assert f"git+{URL}" in source
    compile(source, "<setup>", "exec")


def test_stored_chapters_are_current():
    """The book's own chapters were made by the runner and match their code."""
    root = Path(__file__).resolve().parents[1]
    assert book.check(root) == []


def test_config_overrides_shrink_a_configuration(monkeypatch):
    monkeypatch.setenv("STABILITYLAB_SCALE", "full")
    monkeypatch.setenv("STABILITYLAB_OVERRIDES", '{"width": 8}')
    cfg = book.config("auto", tiny={"width": 1, "data": "a"}, small={"width": 2, "data": "b"},
                      full={"width": 512, "data": "mnist"}, verbose=False)
    assert (cfg.width, cfg.data, cfg.scale) == (8, "mnist", "full")
    monkeypatch.setenv("STABILITYLAB_OVERRIDES", '{"depth": 8}')
    with pytest.raises(ValueError, match="depth"):
        book.config("auto", tiny={"width": 1}, small={"width": 2}, full={"width": 3}, verbose=False)
    monkeypatch.setenv("STABILITYLAB_OVERRIDES", "[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        book.config("auto", tiny={"width": 1}, small={"width": 2}, full={"width": 3}, verbose=False)


def test_stored_run_shows_one_box_per_printed_result_and_no_progress_bars(tiny_book):
    path = tiny_book / "book" / "01_good.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "import sys\nprint('first')\nsys.stdout.flush()\nsys.stderr.write('progress 50%\\r')\n"
        "sys.stderr.flush()\nprint('second')"
    ))
    nbformat.write(nb, path)
    book.run_chapter(path, scale="small", root=tiny_book, progress=False, log=lambda _: None)
    outputs = nbformat.read(path, as_version=4).cells[-1].outputs
    assert [(o.output_type, o.get("name")) for o in outputs] == [("stream", "stdout")]
    assert outputs[0].text == "first\nsecond\n"


def test_glue_names_are_checked():
    with pytest.raises(ValueError, match="name"):
        book.glue("two words", 1.0)
    with pytest.raises(ValueError, match="name"):
        book.glue("", 1.0)
