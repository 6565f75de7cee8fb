"""Sphinx extension for the book's API reference.

- ``{stabilitylab-module} stabilitylab.spectral``: a module's page body, a summary table of its
  public names (``__all__``) followed by their documentation (autosummary + autodoc + napoleon).
- Citation keys in docstrings, written ``[cohen2019certified]``, become citations into the book's
  bibliography (``:cite:p:``); a key missing from ``references.bib`` is a build warning.
- Every documented public name ends with "In the book:" links to the chapters whose code uses it
  (found by reading the chapters' code cells), or to its module's chapter.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
BIBLIOGRAPHY = ROOT / "book" / "references.bib"

# The chapter that explains each module, for names that no chapter's code calls directly.
MODULE_CHAPTERS = {
    "attacks": "01_stability",
    "train": "01_stability",
    "data": "01_stability",
    "models": "01_stability",
    "lipschitz": "02_lipschitz",
    "spectral": "03_spectral_norms",
    "layers": "04_lipschitz_layers",
    "timing": "04_lipschitz_layers",
    "certify": "05_certified_robustness",
    "losses": "05_certified_robustness",
    "smoothing": "07_randomized_smoothing",
    "curvature": "08_curvature",
    "frequency": "06_dynamics_frequency",
    "dynamics": "06_dynamics_frequency",
    "topology": "10_topology",
}
CITATION = re.compile(r"\[([a-z][a-z0-9_-]*\d{4}[a-z0-9_]*)\]")


def _bib_keys() -> set[str]:
    text = BIBLIOGRAPHY.read_text(encoding="utf-8")
    return set(re.findall(r"@\w+\{([^,\s]+),", text))


def _chapters() -> list[Path]:
    return sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))


def _usage_index() -> dict[str, list[str]]:
    """``"module.name" -> [chapter stems]`` for every ``module.name`` or imported name that a
    chapter's code cells use."""
    index: dict[str, list[str]] = {}
    for chapter in _chapters():
        notebook = json.loads(chapter.read_text(encoding="utf-8"))
        code = "\n".join(
            "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            for cell in notebook["cells"]
            if cell["cell_type"] == "code"
        )
        found = set(re.findall(r"\b([a-z_]+)\.([A-Za-z_][A-Za-z0-9_]*)", code))
        for module, names in re.findall(r"from stabilitylab\.([a-z_]+) import ([^\n]+)", code):
            found.update((module, n.strip(" ()")) for n in names.split(","))
        for module, name in found:
            index.setdefault(f"{module}.{name}", []).append(chapter.stem)
    return index


def _titles() -> dict[str, str]:
    titles = {}
    for chapter in _chapters():
        notebook = json.loads(chapter.read_text(encoding="utf-8"))
        for cell in notebook["cells"]:
            if cell["cell_type"] == "markdown":
                source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
                match = re.search(r"^# (.+)$", source, flags=re.M)
                if match:
                    titles[chapter.stem] = match.group(1).strip()
                    break
    return titles


class ModuleReference(SphinxDirective):
    """The body of one module's API page."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        module = importlib.import_module(name)
        public = list(getattr(module, "__all__", []))
        if not public:
            raise self.error(f"{name} has no __all__: nothing to document")
        lines = [f".. automodule:: {name}", "", ".. autosummary::", "   :nosignatures:", ""]
        lines += [f"   {member}" for member in public]
        lines.append("")
        for member in public:
            obj = getattr(module, member)
            if inspect.isclass(obj):
                lines += [f".. autoclass:: {name}.{member}", "   :members:", ""]
            elif callable(obj):
                lines += [f".. autofunction:: {name}.{member}", ""]
            else:
                lines += [f".. autodata:: {name}.{member}", "   :no-value:", ""]
        # The page is MyST Markdown, so nested content is parsed as Markdown: wrap the reST.
        lines = ["```{eval-rst}", *lines, "```"]
        container = nodes.section()
        container.document = self.state.document
        self.state.nested_parse(StringList(lines, source=name), self.content_offset, container)
        return container.children


def _process_docstring(app, what, name, obj, options, lines):
    keys = app.env.stabilitylab_bib_keys

    def cite(match: re.Match) -> str:
        key = match.group(1)
        if key not in keys:
            logger.warning(f"{name}: citation key [{key}] is not in book/references.bib")
            return match.group(0)
        return f":cite:p:`{key}`"

    for i, line in enumerate(lines):
        lines[i] = CITATION.sub(cite, line)

    parts = name.split(".")
    if len(parts) != 3 or parts[0] != "stabilitylab" or what not in ("function", "class"):
        return
    module, member = parts[1], parts[2]
    chapters = app.env.stabilitylab_usage.get(f"{module}.{member}") or (
        [MODULE_CHAPTERS[module]] if module in MODULE_CHAPTERS else []
    )
    if not chapters:
        return
    titles = app.env.stabilitylab_titles
    links = ", ".join(
        f":doc:`{titles.get(stem, stem)} </book/{stem}>`" for stem in sorted(set(chapters))
    )
    lines.extend(["", f"*In the book:* {links}."])


def _collect(app):
    app.env.stabilitylab_bib_keys = _bib_keys()
    app.env.stabilitylab_usage = _usage_index()
    app.env.stabilitylab_titles = _titles()


def setup(app):
    app.connect("builder-inited", _collect)
    app.connect("autodoc-process-docstring", _process_docstring)
    app.add_directive("stabilitylab-module", ModuleReference)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
