"""Aligned columns on stdout, laid out by rich: a table on a terminal, plain columns anywhere else."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable, Sequence

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

# Wider than any row, so that rich never wraps or cuts a cell of plain output.
PLAIN_WIDTH = 1 << 16


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, show_header: bool = True) -> None:
    """On a terminal: a rich table (bold header over a rule, cells folded to fit the width).

    Anywhere else (a pipe, a file, click's CliRunner): the same cells in columns two spaces apart,
    without colour or box characters, one line per row, no trailing blanks, so that scripts can
    split the lines. Whether stdout is a terminal decides, not FORCE_COLOR or TTY_COMPATIBLE.
    """
    terminal = sys.stdout.isatty()
    table = Table(
        box=box.SIMPLE_HEAD if terminal else None,
        show_header=show_header,
        header_style="bold" if terminal else "",
        show_edge=False,
        pad_edge=False,
    )
    for header in headers:
        table.add_column(Text(header), overflow="fold", no_wrap=not terminal)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # Text: cells are data, never rich markup
    if terminal:
        Console(file=sys.stdout, force_terminal=True).print(table)
        return
    plain = io.StringIO()
    Console(file=plain, width=PLAIN_WIDTH, force_terminal=False, color_system=None).print(table)
    click.echo("\n".join(line.rstrip() for line in plain.getvalue().splitlines()))
