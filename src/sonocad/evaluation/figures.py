"""Writing the evaluation's matplotlib figures as PNG files."""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sonocad.io.atomic import write_bytes


def save_figure(path: Path, figure: Figure, dpi: int = 150) -> None:
    """Render in memory with Agg, then write atomically: no pyplot state, no half-written PNG."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    write_bytes(path, buffer.getvalue())
