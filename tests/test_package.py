"""The package installs and imports like a library: lean imports, core dependencies, metadata."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = {"torch", "numpy", "scipy", "scikit-learn", "tqdm"}
HEAVY = ("matplotlib", "seaborn", "pandas", "scipy.stats", "papermill", "nbformat", "yaml")


def _import_in_fresh_interpreter(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_loads_no_plotting_table_or_book_dependencies():
    loaded = _import_in_fresh_interpreter(
        "import json, sys, stabilitylab\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    assert loaded == []


def test_every_public_module_imports_lazily_on_first_use():
    loaded = _import_in_fresh_interpreter(
        "import json, sys, stabilitylab\n"
        "before = 'stabilitylab.plot' in sys.modules\n"
        "plot = stabilitylab.plot\n"
        "from stabilitylab import book, testing\n"
        "print(json.dumps([before, plot.__name__, book.__name__, testing.__name__,"
        " sorted(set(stabilitylab.__all__) - set(dir(stabilitylab)))]))"
    )
    assert loaded == [False, "stabilitylab.plot", "stabilitylab.book", "stabilitylab.testing", []]


def test_star_import_gives_every_public_name():
    names = _import_in_fresh_interpreter(
        "import json\nfrom stabilitylab import *\n"
        "print(json.dumps(sorted(k for k in dir() if not k.startswith('_'))))"
    )
    import stabilitylab

    assert set(stabilitylab.__all__) - {"__version__"} <= set(names)


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_core_dependencies_are_torch_numpy_scipy_scikit_learn_tqdm_with_lower_bounds_only():
    deps = _project()["dependencies"]
    assert {_name(d) for d in deps} == CORE
    assert all(">=" in d and "<" not in d and "==" not in d for d in deps)


def test_plotting_lives_in_an_extra_that_the_book_extra_includes():
    extras = _project()["optional-dependencies"]
    assert {_name(d) for d in extras["plot"]} == {"matplotlib", "seaborn"}
    assert "stabilitylab[plot]" in extras["book"]


def test_license_is_mit_with_spdx_string_and_a_license_file():
    assert _project()["license"] == "MIT"
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert (ROOT / "stabilitylab" / "py.typed").is_file()
    for name in ("CHANGELOG.md", "CITATION.cff"):
        assert (ROOT / name).is_file(), name


def test_installed_metadata_matches_the_project():
    try:
        requires = importlib.metadata.requires("stabilitylab") or []
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - not installed
        pytest.skip("stabilitylab is not installed")
    core = {_name(r) for r in requires if "extra ==" not in r}
    assert core == CORE


def test_plot_without_its_extra_names_the_extra():
    out = subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.modules['matplotlib'] = None; sys.modules['matplotlib.pyplot'] = None\n"
         "try:\n    import stabilitylab.plot\nexcept ImportError as e:\n    print(e)"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )
    assert "stabilitylab[plot]" in out.stdout


def test_book_tools_outside_a_repository_ask_for_the_root(tmp_path):
    out = subprocess.run([sys.executable, "-m", "stabilitylab.book", "list"], capture_output=True, text=True,
                         cwd=tmp_path)
    if out.returncode == 0:  # an editable install finds the repository above the package
        assert "01_stability" in out.stdout
    else:
        assert "--root" in out.stderr
    listed = subprocess.run([sys.executable, "-m", "stabilitylab.book", "--root", str(ROOT), "list"],
                            capture_output=True, text=True, cwd=tmp_path, check=True)
    assert "book/01_stability.ipynb" in listed.stdout
