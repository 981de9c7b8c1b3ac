"""Matplotlib for the reports (profile, explain, monitor): headless, PNG bytes, literal text."""

from __future__ import annotations

import io


def plt():
    """pyplot on the Agg backend: batch nodes have no display."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as pyplot

    return pyplot


def literal(s) -> str:
    """Text for matplotlib: a column named like ``cost ($)`` or ``$x$`` is shown literally
    (matplotlib would parse text between dollar signs as TeX and can fail on it)."""
    return str(s).replace("$", r"\$")


def png_bytes(fig, dpi: int = 80) -> bytes:
    """The figure as PNG bytes (for data URIs or atomic writes); the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt().close(fig)
    return buf.getvalue()
