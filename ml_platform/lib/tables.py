"""Small renderings of rows for Dagster metadata."""

from typing import Any


def markdown_table(rows: list[dict[str, Any]], columns: int | None = None) -> str:
    """A markdown table of ``rows`` (the first ``columns`` keys of the first row)."""
    if not rows:
        return "(no rows)"
    header = list(rows[0])[:columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row.get(c)) for c in header) + " |" for row in rows]
    return "\n".join(lines)
