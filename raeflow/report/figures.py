"""The report's figures as PNG bytes: image grids, metric histograms and the t-SNE maps.

Matplotlib through its object API on the Agg canvas (no pyplot, no display, no global state), so
figures can be drawn in any process or thread. Each function returns the PNG file's bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

DPI = 100
MAX_COLUMNS = 8
"""Images per row of a grid before it wraps."""
MAX_LEGEND = 20
"""Maps with more labels than this show no legend (it would not fit)."""


@dataclass(frozen=True)
class GridItem:
    """One image of the report's sample: its versions (original, noisy, output) and a caption."""

    key: str
    """The image's key."""
    versions: dict[str, bytes | None]
    """PNG thumbnails by version name (`original`, `noisy`, `output`); None when absent."""
    caption: str = ""
    """Short text under the image (e.g. its PSNR)."""


KEY_LINE = 18
"""Characters per caption line when a key is wrapped under its image."""


def wrap_key(key: str, width: int = KEY_LINE) -> list[str]:
    """The whole key in lines of at most `width` characters, broken after `/`, `_`, `-` or `.`
    where one is near the end of a line (else mid-word); nothing is cut off."""
    lines: list[str] = []
    rest = key
    while len(rest) > width:
        cut = max(rest.rfind(mark, 0, width) for mark in "/_-.") + 1
        if cut < width // 2:  # no separator in the second half of the line: break mid-word
            cut = width
        lines.append(rest[:cut])
        rest = rest[cut:]
    if rest or not lines:
        lines.append(rest)
    return lines


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure)
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> `uint8` `(H, W)` (grey) or `(H, W, 3)`."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L" if image.mode in ("L", "I", "I;16") else "RGB"))


def comparison_grid(items: Sequence[GridItem], versions: Sequence[str], title: str) -> bytes:
    """A grid with one column per image and one row per version (original / noisy / output).

    More than `MAX_COLUMNS` images wrap into further blocks of rows, so the grid stays readable.
    """
    num_blocks = max(1, -(-len(items) // MAX_COLUMNS))
    columns = min(max(len(items), 1), MAX_COLUMNS)
    rows = num_blocks * len(versions)
    caption_lines = max((item.caption.count("\n") for item in items), default=0)  # beyond the first
    figure = Figure(figsize=(1.3 * columns + 1.0, 1.45 * rows + 0.6 + 0.14 * caption_lines * num_blocks))
    figure.suptitle(title, fontsize=11)
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for n, item in enumerate(items):
        block, column = divmod(n, MAX_COLUMNS)
        for v, version in enumerate(versions):
            ax = axes[block * len(versions) + v, column]
            data = item.versions.get(version)
            if data is not None:
                pixels = decode_png(data)
                ax.imshow(
                    pixels,
                    cmap="gray" if pixels.ndim == 2 else None,
                    vmin=0,
                    vmax=255,
                    interpolation="nearest",
                )
            if column == 0:
                _text_only(ax).set_ylabel(version, fontsize=9)
            if v == len(versions) - 1 and item.caption:
                _text_only(ax).set_xlabel(item.caption, fontsize=8)
    figure.tight_layout()
    return _png(figure)


def _text_only(ax: Axes) -> Axes:
    """Axes that show their labels but no ticks or frame (around an image)."""
    ax.set_axis_on()
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    return ax


def metric_histograms(panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]) -> bytes:
    """One panel per metric (e.g. `PSNR (dB)`), each overlaying named histograms `(counts, edges)`.

    With noise the PSNR panel shows the model's output beside its noisy input.
    """
    figure = Figure(figsize=(5.0 * max(len(panels), 1), 3.6))
    axes = figure.subplots(1, max(len(panels), 1), squeeze=False)[0]
    for ax, (title, series) in zip(axes, panels.items(), strict=False):
        for name, (counts, edges) in series.items():
            if len(counts):
                ax.stairs(counts, edges, fill=True, alpha=0.55, label=name)
        ax.set_xlabel(title)
        ax.set_ylabel("images")
        if len(series) > 1:
            ax.legend(fontsize=8)
    figure.tight_layout()
    return _png(figure)


def embedding_map(points: np.ndarray, labels: np.ndarray | None, title: str) -> bytes:
    """A scatter of 2-D points `(N, 2)`, coloured by integer label where labels are given."""
    return embedding_maps([(points, title)], labels, "")


def embedding_maps(
    panels: Sequence[tuple[np.ndarray, str]],
    labels: np.ndarray | None,
    title: str,
    label_names: Sequence[str] | None = None,
) -> bytes:
    """Maps side by side, one panel per `(points (N, 2), panel title)`, all of the same N images.

    Points are coloured by integer label where labels are given (the same colour for a label in
    every panel), with one legend at the right naming `label_names[label]` where names are known.
    """
    width = 6.0 * len(panels) + (1.4 if labels is not None else 0.0)
    figure = Figure(figsize=(width, 6.0))
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    classes = np.unique(labels) if labels is not None else np.array([])
    colours = _colours(len(classes))
    for ax, (points, panel_title) in zip(axes, panels, strict=True):
        if labels is None:
            ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.7, color="tab:blue")
        else:
            for colour, label in zip(colours, classes, strict=True):
                chosen = labels == label
                name = str(label)
                if label_names is not None and 0 <= int(label) < len(label_names):
                    name = f"{label} {label_names[int(label)]}"
                ax.scatter(points[chosen, 0], points[chosen, 1], s=6, alpha=0.75, color=colour, label=name)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if labels is not None and len(classes) <= MAX_LEGEND:
        axes[-1].legend(
            title="label", fontsize=8, markerscale=2.5, loc="center left", bbox_to_anchor=(1.0, 0.5)
        )
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return _png(figure)


def _colours(n: int) -> list[tuple[float, ...]]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"]
    if n > 20:
        return [cmap(i / max(n - 1, 1)) for i in range(n)]
    return [cmap(i) for i in range(n)]
