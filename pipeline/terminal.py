"""Aligned columns for a terminal: every table tunegate prints (`tunegate models`, the audit, a run's summary)."""
from __future__ import annotations

from typing import Sequence


def table(rows: Sequence[Sequence[object]], indent: str = "") -> str:
    """Rows of cells, each column as wide as its widest cell, two spaces apart."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join((indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths))).rstrip()
                     for row in cells)
