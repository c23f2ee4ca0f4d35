"""Tables of API objects whose ids and model names are never cut: the other columns give way
first, and when the whole columns alone do not fit the terminal, each row prints as a block of
its own (as psql's expanded display does), so an id can always be copied from the screen."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rich import table
from rich.cells import cell_len
from rich.console import Console
from rich.text import Text

SHRUNK_MIN = 5
"""The narrowest a column that gives way gets ("trai…"); narrower than that, rows print as
blocks instead."""
GAP = 2
"""Spaces between two columns: the tables have no borders (as `docker ps` and `kubectl get`),
so a double click selects an id and nothing else."""


@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[dict[str, Any]], str]
    whole: bool = False
    """Never cut (ids, model names): always shown in full on one line."""
    justify: Literal["left", "right"] = "left"


def fit_widths(columns: Sequence[Column], rows: list[list[str]], width: int) -> list[int] | None:
    """Each column's width in a table at most ``width`` wide: a whole column its longest cell,
    the others an even share of what is left (never more than they need); None when that
    leaves one of them narrower than SHRUNK_MIN (or whole columns alone are too wide)."""
    natural = [max([cell_len(column.header), *(cell_len(row[i]) for row in rows)])
               for i, column in enumerate(columns)]
    room = width - GAP * (len(columns) - 1)
    room -= sum(n for n, column in zip(natural, columns, strict=True) if column.whole)
    widths = list(natural)
    giving_way = sorted((natural[i], i) for i, column in enumerate(columns) if not column.whole)
    for done, (need, i) in enumerate(giving_way):
        widths[i] = min(need, room // (len(giving_way) - done))
        room -= widths[i]
    if room < 0 or any(widths[i] < min(need, SHRUNK_MIN) for need, i in giving_way):
        return None
    return widths


def print_rows(console: Console, objects: list[dict[str, Any]], columns: Sequence[Column]) -> None:
    """``objects`` as a table fitted to the console, or as blocks when the whole columns do
    not fit in a table (the first column, the id, heads each block)."""
    rows = [[column.cell(obj) for column in columns] for obj in objects]
    widths = fit_widths(columns, rows, console.width)
    if widths is None:
        print_blocks(console, columns, rows)
        return
    grid = table.Table(*(
        table.Column(column.header, width=width, no_wrap=True, justify=column.justify,
                     overflow="fold" if column.whole else "ellipsis")
        for column, width in zip(columns, widths, strict=True)),
        box=None, pad_edge=False, padding=(0, GAP // 2), header_style="bold")
    for row in rows:
        grid.add_row(*(Text(cell) for cell in row))  # Text: a "[" in a name is not markup
    console.print(grid)


def print_blocks(console: Console, columns: Sequence[Column], rows: list[list[str]]) -> None:
    label = max(len(column.header) for column in columns[1:]) if len(columns) > 1 else 0
    for n, row in enumerate(rows):
        if n:
            console.print()
        # soft_wrap: a value wider than the terminal is left to it, never broken by rich
        console.print(Text(row[0], style="bold"), soft_wrap=True)
        for column, cell in zip(columns[1:], row[1:], strict=True):
            console.print(Text.assemble(("  " + column.header.ljust(label), "dim"), "  ", cell),
                          soft_wrap=True)
