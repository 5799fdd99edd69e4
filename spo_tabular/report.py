"""Plain-text tables for the CLI: one row per claim or setting, aligned columns, no dependencies."""
from __future__ import annotations


def _cell(value) -> str:
    if isinstance(value, bool):
        return "PASS" if value else "FAIL"
    if isinstance(value, float):
        return f"{value:.3g}" if (value == 0 or 1e-3 <= abs(value) < 1e4) else f"{value:.2e}"
    return str(value)


def format_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows of dicts → an aligned text table with a header rule."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[k]) for r in cells)) for k, c in enumerate(columns)]
    line = lambda parts: "  ".join(p.ljust(w) for p, w in zip(parts, widths)).rstrip()
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def format_record(record: dict) -> str:
    """One record → 'key  value' lines."""
    width = max(len(k) for k in record)
    return "\n".join(f"{k.ljust(width)}  {_cell(v)}" for k, v in record.items())
