"""The book's figure style (seaborn) and its recurring plots.

Call :func:`set_style` once per chapter; :func:`figure` makes figures of the book's sizes and
:func:`save` writes them where ``STABILITYLAB_FIGURES`` (or ``directory``) says and returns them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from stabilitylab._checks import check_int, check_number, check_positive, check_tensor
from stabilitylab._devices import resolve_device
from stabilitylab._modes import eval_mode

try:
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "stabilitylab.plot needs matplotlib and seaborn: pip install 'stabilitylab[plot]'"
    ) from error

__all__ = ["set_style", "figure", "save", "image_grid", "decision_boundary", "PALETTE"]

PALETTE = "colorblind"
_WIDTH = 6.4  # inches: one column of the rendered book


def set_style(context: str = "notebook", *, font_scale: float = 0.95) -> None:
    """The book's look: seaborn's white grid, the colorblind palette, crisp PNG figures
    (twice the pixels in a notebook, "retina", so that they stay sharp at the page width).

    Args:
        context: seaborn's context, one of "paper", "notebook", "talk", "poster".
        font_scale: a factor > 0 on the context's font sizes.
    """
    if not isinstance(context, str) or context not in ("paper", "notebook", "talk", "poster"):
        raise ValueError(f"context must be one of ('paper', 'notebook', 'talk', 'poster'), got {context!r}")
    font_scale = check_positive(font_scale, "font_scale")
    sns.set_theme(context=context, style="whitegrid", palette=PALETTE, font_scale=font_scale)
    _retina_inline()
    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 150,
            "savefig.bbox": "tight",
            "axes.spines.top": False,
            "axes.spines.right": False,
            "legend.frameon": False,
            "image.cmap": "viridis",
        }
    )


def _retina_inline() -> None:
    """Ask IPython's inline backend for retina PNGs when running in a notebook kernel."""
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:
        return
    if get_ipython() is not None:
        set_matplotlib_formats("retina")


def figure(
    nrows: int = 1,
    ncols: int = 1,
    *,
    width: float | None = None,
    height: float | None = None,
    **subplot_kw,
) -> tuple[Figure, Axes | np.ndarray]:
    """A figure sized for the book: ``width`` defaults to one column, ``height`` to 0.75 of a
    panel's width per row (capped so that wide grids stay readable). Extra keywords go to
    :func:`matplotlib.pyplot.subplots`."""
    nrows, ncols = check_int(nrows, "nrows"), check_int(ncols, "ncols")
    if width is not None:
        width = check_positive(width, "width")
    if height is not None:
        height = check_positive(height, "height")
    width = width or _WIDTH
    height = height or min(0.75 * width / ncols, 3.4) * nrows
    subplot_kw.setdefault("layout", "constrained")
    return plt.subplots(nrows, ncols, figsize=(width, height), **subplot_kw)


def save(fig: Figure, name: str, *, directory: str | os.PathLike | None = None, formats: Sequence[str] = ("png",)) -> Figure:
    """Save ``fig`` as ``<directory>/<name>.<format>`` when a directory is given or the
    environment variable ``STABILITYLAB_FIGURES`` names one; always return ``fig`` (so a
    notebook cell ending with ``save(...)`` shows it exactly once: the figure is detached from
    pyplot, so the inline backend does not draw it a second time)."""
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if isinstance(formats, str) or not all(isinstance(f, str) and f for f in formats):
        raise ValueError(f"formats must be a sequence of format names such as ('png', 'svg'), got {formats!r}")
    if directory is not None and not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory must be a path or None, got {type(directory).__name__}")
    if not name or any(sep in name for sep in "/\\"):
        raise ValueError(f"name must be a plain file name without folders, got {name!r}")
    directory = directory or os.environ.get("STABILITYLAB_FIGURES")
    if directory:
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        for fmt in formats:
            fig.savefig(folder / f"{name}.{fmt}")
    plt.close(fig)
    return fig


def _to_numpy_image(image: Tensor | np.ndarray) -> np.ndarray:
    array = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return array


def image_grid(
    images: Tensor | np.ndarray | Sequence,
    *,
    titles: Sequence[str] | None = None,
    ncols: int | None = None,
    value_range: tuple[float, float] | None = None,
    cmap: str = "gray",
    axes: np.ndarray | None = None,
) -> Figure:
    """Show images ``(N, C, H, W)`` / ``(N, H, W)`` in a grid without ticks, one colour scale
    (``value_range``, default each set's min and max) so that perturbations are comparable."""
    if isinstance(images, (str, bytes)) or not hasattr(images, "__len__"):
        raise TypeError(f"images must be a tensor, an array or a sequence of images, got {type(images).__name__}")
    images = list(images)
    if not images:
        raise ValueError("images is empty")
    if ncols is not None:
        ncols = check_int(ncols, "ncols")
    if value_range is not None:
        if not isinstance(value_range, (tuple, list)) or len(value_range) != 2:
            raise ValueError(f"value_range must be a pair (low, high) or None, got {value_range!r}")
        low = check_number(value_range[0], "value_range")
        high = check_number(value_range[1], "value_range")
        if not low < high:
            raise ValueError(f"value_range must satisfy low < high, got {value_range!r}")
    if titles is not None and (isinstance(titles, str) or not hasattr(titles, "__len__")):
        raise TypeError(f"titles must be a sequence of str or None, got {titles!r}")
    arrays = [_to_numpy_image(im) for im in images]
    lo, hi = value_range or (min(a.min() for a in arrays), max(a.max() for a in arrays))
    if axes is None:
        ncols = ncols or min(len(arrays), 8)
        nrows = -(-len(arrays) // ncols)
        fig, axes = figure(nrows, ncols, height=1.1 * nrows * _WIDTH / ncols, squeeze=False)
    else:
        fig = np.ravel(axes)[0].figure
    flat = np.ravel(axes)
    for i, ax in enumerate(flat):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        if i >= len(arrays):
            ax.axis("off")
            continue
        rgb = arrays[i].ndim == 3
        shown = np.clip((arrays[i] - lo) / (hi - lo + 1e-12), 0, 1) if rgb else arrays[i]
        ax.imshow(shown, cmap=None if rgb else cmap, vmin=None if rgb else lo, vmax=None if rgb else hi)
        if titles is not None and i < len(titles):
            ax.set_title(titles[i], fontsize="small")
    return fig


@torch.no_grad()
def decision_boundary(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    ax: Axes | None = None,
    resolution: int = 200,
    margin: float = 0.5,
    device: str | torch.device | None = None,
) -> Axes:
    """Decision regions of a 2-D classifier with the data on top.

    The grid is evaluated on the model's device (or ``device``) in eval mode; every submodule's
    mode is restored afterwards, also on error. The model is not moved.

    Args:
        model: maps ``(N, 2)`` to logits ``(N, C)`` (or scores whose arg max is the class).
        x: ``(N, 2)`` points; y: ``(N,)`` labels.
        resolution: grid points per axis (>= 2); margin: padding around the data (>= 0).
        device: where the grid is sent; default the model's device.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_tensor(x, "x", min_dims=2, max_dims=2)
    if x.shape[1] != 2:
        raise ValueError(f"x must have shape (N, 2), got {tuple(x.shape)}")
    if not isinstance(y, Tensor) or y.is_floating_point() or y.shape != (x.shape[0],):
        raise ValueError(f"y must be an integer tensor of shape ({x.shape[0]},), got {y!r:.80}")
    resolution = check_int(resolution, "resolution", 2)
    margin = check_number(margin, "margin", minimum=0.0)
    device = resolve_device(device)
    ax = ax or figure()[1]
    if device is None:
        device = next(iter((*model.parameters(), *model.buffers())), x).device
    lo = x.detach().min(0).values.cpu() - margin
    hi = x.detach().max(0).values.cpu() + margin
    gx, gy = torch.meshgrid(
        torch.linspace(lo[0], hi[0], resolution), torch.linspace(lo[1], hi[1], resolution), indexing="xy"
    )
    grid = torch.stack([gx.ravel(), gy.ravel()], 1).to(device=device, dtype=x.dtype)
    with eval_mode(model):
        labels = model(grid).argmax(1).reshape(resolution, resolution).cpu()
    colors = sns.color_palette(PALETTE, int(max(labels.max().item(), y.max().item())) + 1)
    from matplotlib.colors import ListedColormap

    ax.contourf(gx, gy, labels, levels=np.arange(len(colors) + 1) - 0.5, cmap=ListedColormap(colors), alpha=0.25)
    ax.scatter(x[:, 0].cpu(), x[:, 1].cpu(), c=[colors[i] for i in y.cpu().tolist()], s=8, edgecolor="none")
    ax.set_aspect("equal")
    return ax
