"""Looking inside the online store's tables, for why it cannot answer (SQLite or PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from ml_platform.lib import feature_store as fs


def sqlite_path(store) -> Path | None:
    """The SQLite online store's file, None for another online store."""
    config = store.config.online_store
    if getattr(config, "type", "") != "sqlite":
        return None
    path = Path(config.path)
    return (
        path if path.is_absolute() or not store.config.repo_path else store.config.repo_path / path
    )


def tables_problem(store) -> str | None:
    """Feature views whose online table is missing or empty, or None (also None for an online
    store that is neither SQLite nor PostgreSQL: only a failed read reveals a problem there)."""
    tables = {view: f"{store.project}_{view}" for view in fs.VIEWS}
    path, config = sqlite_path(store), store.config.online_store
    if path is not None:
        if not path.exists():
            return f"the online store file {path.name} is missing"
        rows = _sqlite_rows(path, tables)
    elif getattr(config, "type", "") == "postgres":
        rows = _postgres_rows(config, tables)
    else:
        rows = {}
    return _describe(rows)


def _sqlite_rows(path: Path, tables: dict[str, str]) -> dict[str, bool | None]:
    """For each view whether its table has a row; None: no table."""
    import sqlite3
    from contextlib import closing

    rows: dict[str, bool | None] = {}
    # Read-only: never create the file or a table while looking.
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
        for view, table in tables.items():
            found = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
            ).fetchone()
            rows[view] = (
                None
                if not found
                else bool(db.execute(f'SELECT 1 FROM "{table}" LIMIT 1').fetchone())
            )
    return rows


def _postgres_rows(config, tables: dict[str, str]) -> dict[str, bool | None]:
    """For each view whether its table has a row; None: no table."""
    from feast.infra.utils.postgres.connection_utils import _get_conn

    rows: dict[str, bool | None] = {}
    with _get_conn(config) as conn, conn.cursor() as cur:
        for view, table in tables.items():
            cur.execute("SELECT to_regclass(%s)", (f'"{table}"',))
            if cur.fetchone()[0] is None:
                rows[view] = None
            else:
                cur.execute(f'SELECT 1 FROM "{table}" LIMIT 1')
                rows[view] = cur.fetchone() is not None
    return rows


def _describe(rows: dict[str, bool | None]) -> str | None:
    """The views without a table and those without rows, in one message; None if neither."""
    missing = [v for v, r in rows.items() if r is None]
    empty = [v for v, r in rows.items() if r is False]
    if not missing and not empty:
        return None
    parts = [f"no table for {', '.join(missing)}"] * bool(missing)
    parts += [f"no rows in {', '.join(empty)}"] * bool(empty)
    return f"online store: {'; '.join(parts)}: materialize online_features"
