"""matplotlib for files: the Agg backend, set once, for every figure the training side writes."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (PNG files, no display)."""
    import matplotlib  # noqa: PLC0415 - heavy; only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt
