"""The chapter runner: scales, execution with papermill, and the integrity check.

Chapters are the notebooks listed in ``_toc.yml``. They are stored with their outputs, and only
this runner writes them: :func:`run_chapter` executes a chapter at a scale, records how the run
was made in ``metadata["stabilitylab"]`` and replaces the stored file only after a successful run.
:func:`check` tells when a stored chapter no longer matches its code.

Command line::

    python -m stabilitylab.book run [CHAPTER ...] --scale tiny|small|full|auto
    python -m stabilitylab.book check
    python -m stabilitylab.book list
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch

SCALES = ("tiny", "small", "full")
SCALE_ENV = "STABILITYLAB_SCALE"
OVERRIDES_ENV = "STABILITYLAB_OVERRIDES"
METADATA_KEY = "stabilitylab"
METADATA_FIELDS = ("scale", "device", "seconds", "version", "code_hash")
SETUP_TAG = "colab-setup"
PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"

__all__ = [
    "Config",
    "ChapterError",
    "RunResult",
    "config",
    "resolve_scale",
    "find_root",
    "chapters",
    "resolve_chapters",
    "code_hash",
    "repository_url",
    "setup_cell_source",
    "run_chapter",
    "check",
    "glue",
]


class ChapterError(RuntimeError):
    """A chapter failed to execute; the stored notebook was left untouched."""


class Config(SimpleNamespace):
    """A chapter's settings at the chosen scale: attribute access to the values, plus
    ``scale`` ("tiny" | "small" | "full") and ``device`` (a :class:`torch.device`)."""


def resolve_scale(scale: str = "auto") -> str:
    """The scale a chapter runs at.

    ``STABILITYLAB_SCALE``, when set, overrides ``scale`` (the runner and the tests use it to run
    chapters at a chosen scale). ``"auto"`` means ``"full"`` when CUDA is available, else ``"small"``.

    Raises:
        ValueError: ``scale`` (or the environment variable) is not tiny, small, full or auto.
    """
    env = os.environ.get(SCALE_ENV, "").strip().lower()
    chosen, source = (env, f"environment variable {SCALE_ENV}") if env else (scale, "SCALE")
    if not isinstance(chosen, str) or chosen.lower() not in SCALES + ("auto",):
        raise ValueError(f"{source} must be one of {SCALES + ('auto',)}, got {chosen!r}")
    chosen = chosen.lower()
    if chosen == "auto":
        chosen = "full" if torch.cuda.is_available() else "small"
    return chosen


def config(
    SCALE: str = "auto",
    *,
    tiny: dict[str, Any],
    small: dict[str, Any],
    full: dict[str, Any],
    device: str | torch.device | None = None,
    verbose: bool = True,
) -> Config:
    """Pick a chapter's settings for the scale it runs at.

    Args:
        SCALE: "tiny" (proves the chapter runs, seconds), "small" (CPU, minutes), "full" (GPU) or
            "auto" (full on CUDA, else small). ``STABILITYLAB_SCALE`` overrides it.
        tiny, small, full: the settings at each scale; the three must have the same keys.
        device: where the chapter computes; default CUDA when available, else the CPU.
        verbose: print one line saying the scale and device.

    ``STABILITYLAB_OVERRIDES``, a JSON object, replaces chosen settings after the scale is
    picked (the tests use it to run the full configuration with smaller sizes).

    Returns:
        A :class:`Config` whose attributes are the chosen settings, ``scale`` and ``device``.

    Raises:
        ValueError: an unknown scale, settings whose keys differ between scales, or a setting
            named ``scale`` or ``device``.
    """
    per_scale = {"tiny": tiny, "small": small, "full": full}
    for name, values in per_scale.items():
        if not isinstance(values, dict):
            raise TypeError(f"{name} must be a dict of settings, got {type(values).__name__}")
        reserved = {"scale", "device"} & set(values)
        if reserved:
            raise ValueError(f"{name} may not define {sorted(reserved)}: config sets them itself")
    keys = set(tiny)
    for name, values in per_scale.items():
        if set(values) != keys:
            missing = sorted(keys - set(values))
            extra = sorted(set(values) - keys)
            raise ValueError(
                f"the settings must have the same keys at every scale: {name} lacks {missing} "
                f"and adds {extra} compared with tiny"
            )
    scale = resolve_scale(SCALE)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    values = copy.deepcopy(per_scale[scale])
    values.update(_overrides(keys))
    cfg = Config(**values, scale=scale, device=torch.device(device))
    if verbose:
        from stabilitylab import __version__

        print(f"stabilitylab {__version__} | scale: {scale} | device: {cfg.device}")
    return cfg


def _overrides(keys: set[str]) -> dict[str, Any]:
    """Settings replaced through ``STABILITYLAB_OVERRIDES`` (a JSON object): how the tests run a
    chapter's full configuration (its data, models and loops) with its sizes shrunk."""
    text = os.environ.get(OVERRIDES_ENV, "").strip()
    if not text:
        return {}
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{OVERRIDES_ENV} must be a JSON object, got {text!r}: {err}") from None
    if not isinstance(overrides, dict):
        raise ValueError(f"{OVERRIDES_ENV} must be a JSON object, got {text!r}")
    unknown = sorted(set(overrides) - keys)
    if unknown:
        raise ValueError(f"{OVERRIDES_ENV} names settings this chapter does not have: {unknown}")
    return overrides


def glue(name: str, value: Any, *, display: bool = False) -> None:
    """Record ``value`` under ``name`` so that the chapter's prose can quote it.

    The rendered book pastes it with ``{glue:text}`name:.3f``` (a number, formatted) or
    ``{glue:figure}`` (a figure): every number the text quotes then comes from the run that made
    the stored outputs, so a re-run never leaves the prose behind. This is MyST-NB's ``glue``;
    where MyST-NB is not installed (a chapter opened on Colab), nothing is recorded and the
    value is shown only when ``display`` is true.

    Args:
        name: the key the prose uses, letters, digits, ``-`` and ``_`` only.
        value: a number, string, figure or anything IPython can display.
        display: also show the value in the cell's output.

    Raises:
        ValueError: ``name`` is empty or holds other characters.
    """
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ValueError(f"name must be letters, digits, '-' and '_' only, got {name!r}")
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        if display:
            from IPython.display import display as show

            show(value)
        return
    myst_glue(name, value, display=display)


# ----------------------------------------------------------------------------- book layout


def find_root(start: str | os.PathLike | None = None) -> Path:
    """The book's root: the nearest folder at or above ``start`` (default: the working directory)
    holding ``_toc.yml``, else the folder above the installed package.

    Raises:
        FileNotFoundError: no ``_toc.yml`` was found.
    """
    here = Path(start or os.getcwd()).resolve()
    candidates = [here, *here.parents, Path(__file__).resolve().parents[2]]
    for folder in candidates:
        if (folder / "_toc.yml").is_file():
            return folder
    raise FileNotFoundError(
        f"no _toc.yml found at or above {here}: run from the book's folder (a clone of the "
        "repository) or pass its path (root=... here, --root on the command line)"
    )


def _load_yaml(path: Path) -> Any:
    import yaml

    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _toc_files(node: Any) -> list[str]:
    files: list[str] = []
    if isinstance(node, dict):
        for key in ("root", "file"):
            if isinstance(node.get(key), str):
                files.append(node[key])
        for value in node.values():
            if isinstance(value, (list, dict)):
                files.extend(_toc_files(value))
    elif isinstance(node, list):
        for item in node:
            files.extend(_toc_files(item))
    return files


def chapters(root: str | os.PathLike | None = None) -> list[Path]:
    """The chapter notebooks listed in ``_toc.yml``, in book order (paths may not exist yet)."""
    root = find_root(root)
    entries = _toc_files(_load_yaml(root / "_toc.yml"))
    paths = []
    for entry in entries:
        path = root / entry
        if path.suffix in (".md", ".rst") or (not path.suffix and path.with_suffix(".md").exists()):
            continue
        paths.append(path if path.suffix == ".ipynb" else path.with_suffix(".ipynb"))
    return paths


def resolve_chapters(names: list[str], root: str | os.PathLike | None = None) -> list[Path]:
    """Chapters named by stem ("01_stability"), number ("01" or "1"), slug ("stability") or path.

    Raises:
        ValueError: a name matches no chapter (the message lists the chapters).
    """
    known = chapters(root)
    if not names:
        return known
    chosen = []
    for name in names:
        stem = Path(name).stem
        matches = [
            p
            for p in known
            if stem == p.stem
            or stem == p.stem.split("_", 1)[0]
            or (stem.isdigit() and p.stem.split("_", 1)[0].isdigit() and int(stem) == int(p.stem.split("_", 1)[0]))
            or ("_" in p.stem and stem == p.stem.split("_", 1)[1])
        ]
        if len(matches) != 1:
            listing = ", ".join(p.stem for p in known) or "(none)"
            raise ValueError(f"unknown chapter {name!r}; the chapters are: {listing}")
        chosen.append(matches[0])
    return chosen


def repository_url(root: str | os.PathLike | None = None) -> str:
    """The repository URL, held in one place: ``repository.url`` in ``_config.yml``."""
    root = find_root(root)
    url = ((_load_yaml(root / "_config.yml") or {}).get("repository") or {}).get("url")
    if not url:
        raise ValueError(f"{root / '_config.yml'} has no repository.url")
    return str(url)


def setup_cell_source(url: str) -> str:
    """The source of a chapter's Colab setup cell, built from the repository URL."""
    return (
        "# Colab and other fresh machines: install stabilitylab when it is missing.\n"
        "import importlib.util, subprocess, sys\n"
        'if importlib.util.find_spec("stabilitylab") is None:\n'
        "    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\",\n"
        f'                    "stabilitylab[plot] @ git+{url}"], check=True)'
    )


def _tags(cell: Any) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _source(cell: Any) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def code_hash(notebook: Any) -> str:
    """SHA-256 of a notebook's code cells (sources only, in order, papermill's injected cell
    excluded): it changes exactly when the code that made the outputs changes."""
    sources = [
        _source(cell)
        for cell in notebook["cells"]
        if cell.get("cell_type") == "code" and INJECTED_TAG not in _tags(cell)
    ]
    return hashlib.sha256(json.dumps(sources).encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- running


@dataclass
class RunResult:
    """What a chapter run did: the chapter, its scale, device and wall time in seconds."""

    chapter: Path
    scale: str
    device: str
    seconds: float


def _device_name() -> str:
    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return "cpu"


def _clean_executed(notebook: Any) -> None:
    """Drop papermill's traces and the standard-error streams (progress bars and warnings,
    which the book does not show), then join what a cell printed into one output box."""
    notebook["cells"] = [c for c in notebook["cells"] if INJECTED_TAG not in _tags(c)]
    notebook["metadata"].pop("papermill", None)
    for cell in notebook["cells"]:
        for key in ("papermill", "execution"):
            cell.get("metadata", {}).pop(key, None)
        if cell.get("cell_type") == "code":
            cell["outputs"] = _joined_streams(cell.get("outputs", []))


def _joined_streams(outputs: list[Any]) -> list[Any]:
    """Outputs without stderr streams, with consecutive stdout streams merged into one."""
    joined: list[Any] = []
    for out in outputs:
        if out.get("output_type") == "stream":
            if out.get("name") == "stderr":
                continue
            text = "".join(out["text"]) if isinstance(out["text"], list) else out["text"]
            previous = joined[-1] if joined else None
            if previous is not None and previous.get("output_type") == "stream":
                previous["text"] += text
                continue
            out = copy.deepcopy(out)
            out["text"] = text
        joined.append(out)
    return joined


def _sync_setup_cell(notebook: Any, url: str) -> bool:
    changed = False
    for cell in notebook["cells"]:
        if cell.get("cell_type") == "code" and SETUP_TAG in _tags(cell):
            wanted = setup_cell_source(url)
            if _source(cell) != wanted:
                cell["source"] = wanted
                changed = True
    return changed


def _first_line(source: str) -> str:
    lines = [line for line in str(source).splitlines() if line.strip()]
    return lines[0][:60] if lines else ""


def _stored_index(executed_path: str, index: int) -> int:
    """The index, in the stored notebook, of cell ``index`` of papermill's output (which holds
    the injected-parameters cell too)."""
    import nbformat

    try:
        cells = nbformat.read(executed_path, as_version=4)["cells"]
    except Exception:  # papermill wrote nothing readable: report its own index
        return index
    return index - sum(INJECTED_TAG in _tags(c) for c in cells[:index])


def run_chapter(
    chapter: str | os.PathLike,
    *,
    scale: str = "small",
    root: str | os.PathLike | None = None,
    kernel_name: str = "python3",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> RunResult:
    """Execute one chapter with papermill and store it with its outputs.

    The chapter runs in its own folder with ``STABILITYLAB_SCALE`` set to the scale (so the
    notebook's ``config`` picks it whatever its ``SCALE`` cell says), the Colab setup cell brought
    in line with ``_config.yml``'s repository URL. On success the stored notebook is replaced
    (written to a temporary file, then renamed) and carries ``metadata["stabilitylab"]`` with the
    scale, device, seconds, package version and code hash. On failure it is left byte-identical.

    Raises:
        ChapterError: the chapter raised; the message names the chapter and the failing cell.
    """
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from stabilitylab import __version__

    path = Path(chapter).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"chapter {path} does not exist")
    scale = resolve_scale(scale) if scale == "auto" else scale
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES + ('auto',)}, got {scale!r}")

    notebook = nbformat.read(path, as_version=4)
    _sync_setup_cell(notebook, repository_url(root or path.parent))
    workdir = path.parent
    fd_in, tmp_in = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".in.tmp.ipynb", dir=workdir)
    fd_out, tmp_out = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".out.tmp.ipynb", dir=workdir)
    os.close(fd_in)
    os.close(fd_out)
    # the stored pages show results, not progress bars (a reader running the chapter sees them)
    previous_env = {key: os.environ.get(key) for key in (SCALE_ENV, "TQDM_DISABLE")}
    os.environ.update({SCALE_ENV: scale, "TQDM_DISABLE": "1"})
    start = time.perf_counter()
    try:
        nbformat.write(notebook, tmp_in)
        try:
            executed = papermill.execute_notebook(
                tmp_in,
                tmp_out,
                parameters={"SCALE": scale},
                kernel_name=kernel_name,
                cwd=str(workdir),
                progress_bar=progress,
                log_output=False,
            )
        except PapermillExecutionError as err:
            raise ChapterError(
                f"chapter {path.stem} failed in cell {_stored_index(tmp_out, err.cell_index)} "
                f"(execution count {err.exec_count}, starting {_first_line(err.source)!r}): "
                f"{err.ename}: {err.evalue}"
            ) from err
        seconds = time.perf_counter() - start
        executed = nbformat.from_dict(executed)
        _clean_executed(executed)
        executed["metadata"][METADATA_KEY] = {
            "scale": scale,
            "device": _device_name(),
            "seconds": round(seconds, 1),
            "version": __version__,
            "code_hash": code_hash(executed),
        }
        nbformat.write(executed, tmp_out)
        os.replace(tmp_out, path)
    finally:
        for key, value in previous_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for leftover in (tmp_in, tmp_out):
            if os.path.exists(leftover):
                os.remove(leftover)
    result = RunResult(path, scale, _device_name(), seconds)
    log(f"{path.stem}: ran at scale {scale} on {result.device} in {seconds:.1f} s")
    return result


def check(root: str | os.PathLike | None = None) -> list[str]:
    """What is wrong with the stored chapters; an empty list when every chapter is current.

    A chapter is current when it exists, carries the runner's metadata, holds no error output,
    its code cells hash to the recorded ``code_hash``, and its Colab setup cell matches the
    repository URL in ``_config.yml``.
    """
    import nbformat

    root = find_root(root)
    url = repository_url(root)
    problems = []
    for path in chapters(root):
        name = path.relative_to(root)
        if not path.is_file():
            problems.append(f"{name}: listed in _toc.yml but missing")
            continue
        notebook = nbformat.read(path, as_version=4)
        meta = notebook["metadata"].get(METADATA_KEY)
        if not isinstance(meta, dict) or not set(METADATA_FIELDS) <= set(meta):
            problems.append(f"{name}: not made by the runner (no metadata['{METADATA_KEY}'])")
            continue
        errors = [
            i
            for i, cell in enumerate(notebook["cells"])
            for out in cell.get("outputs", [])
            if out.get("output_type") == "error"
        ]
        if errors:
            problems.append(f"{name}: error output in cell(s) {errors}")
        if code_hash(notebook) != meta["code_hash"]:
            problems.append(f"{name}: code changed since its stored run (re-run the runner)")
        reference = copy.deepcopy(notebook)
        if _sync_setup_cell(reference, url):
            problems.append(f"{name}: Colab setup cell does not match repository.url in _config.yml")
    return problems
