"""Plain-text and Markdown tables, and the few number formats every report shares."""

from __future__ import annotations

from collections import Counter


def text_table(header: list[str], rows: list[list[str]], indent: str = "", right: bool = True) -> str:
    """First column left-aligned; the others right-aligned (numbers) or, with ``right=False``,
    left-aligned (a table of names and notes)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        first = str(cells[0]).ljust(widths[0])
        rest = (str(c).rjust(w) if right else str(c).ljust(w) for c, w in zip(cells[1:], widths[1:]))
        return indent + "  ".join([first, *rest]).rstrip()

    return "\n".join(line(r) for r in [header, *rows])


def md_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    align = "| " + " | ".join([":---", *["---:"] * (len(header) - 1)]) + " |"
    return "\n".join([line(header), align, *(line(r) for r in rows)])


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def counts(counter: Counter) -> str:
    """``bacterial 50, normal 50``: a Counter for a log line, sorted by key."""
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items()))
