"""Quoting for the SQL that the DuckDB steps build from file paths and contract names."""

from pathlib import Path


def literal(text: str) -> str:
    """A SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


def ident(name: str) -> str:
    """A quoted identifier: column names come from users' files and contracts."""
    return '"' + name.replace('"', '""') + '"'


def file_list(paths: list[Path]) -> str:
    """A SQL list of file paths, for read_parquet/read_csv."""
    return "[" + ", ".join(literal(str(p)) for p in paths) + "]"
