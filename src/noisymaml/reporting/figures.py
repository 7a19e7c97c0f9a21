"""What every report figure shares: byte-identical PNGs and a legend that hides no data.

Matplotlib writes its version into a PNG's metadata unless told not to, so the same inputs
would give different files on machines with different matplotlib; `save_png` drops it.
A legend inside the axes can cover curves or error bars; `legend_below` puts the first
panel's legend under the panels instead.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure


def legend_below(figure: Figure, axes: Axes, columns: int) -> None:
    """The legend of `axes`, in `columns` columns below every panel of a constrained-layout figure."""
    figure.legend(*axes.get_legend_handles_labels(), loc="outside lower center", ncols=columns,
                  fontsize="small")


def save_png(figure: Figure, path: Path) -> None:
    figure.savefig(path, dpi=100, metadata={"Software": None})
