"""``suitkit backup DIR`` and ``suitkit restore DIR``: a server's data directory and its
tracker database, consistent while it serves (``server.backup``; docs/operations.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from suitkit.cli.common import JsonOption, handles_errors, new_app, out, print_json

app = new_app()

_DATA_HELP = "The server's data directory (as serve --data; also SUITKIT_DATA)."
_DB_HELP = ("The tracker database URL if not DATA/tracker.db (as serve --db; also SUITKIT_DB): "
            "postgresql+psycopg://... is dumped with pg_dump and restored with pg_restore.")


@app.command("backup")
@handles_errors
def backup_command(
    target: Annotated[Path, typer.Argument(metavar="DIR", help="New folder for the backup.")],
    data: Annotated[Path, typer.Option("--data", envvar="SUITKIT_DATA", help=_DATA_HELP)],
    db: Annotated[str | None, typer.Option("--db", envvar="SUITKIT_DB", help=_DB_HELP)] = None,
    as_json: JsonOption = False,
) -> None:
    """Back up a data directory (blobs, releases) and the tracker database while the server
    runs; the folder appears only once the backup is complete."""
    from suitkit.server.backup import backup  # noqa: PLC0415

    summary = backup(data, target, db_url=db)
    if as_json:
        print_json({"backup": str(target), **_counts(summary)})
        return
    out.print(f"backup {target}: {summary.releases} releases, {summary.blobs} blobs "
              f"({summary.blob_bytes} bytes), database: {summary.database or 'none'}",
              markup=False)


@app.command("restore")
@handles_errors
def restore_command(
    source: Annotated[Path, typer.Argument(metavar="DIR", help="A folder made by backup.")],
    data: Annotated[Path, typer.Option("--data", envvar="SUITKIT_DATA",
                                       help="New (absent or empty) data directory.")],
    db: Annotated[str | None, typer.Option("--db", envvar="SUITKIT_DB", help=_DB_HELP
                                           + " A PostgreSQL database must exist, empty.")
                  ] = None,
    as_json: JsonOption = False,
) -> None:
    """Restore a backup into a new data directory (and database); then start serve on it
    (it migrates the schema if the backup is older)."""
    from suitkit.server.backup import restore  # noqa: PLC0415

    summary = restore(source, data, db_url=db)
    if as_json:
        print_json({"restored": str(source), "data": str(data), **_counts(summary)})
        return
    out.print(f"restored {source} into {data}: {summary.releases} releases, {summary.blobs} "
              f"blobs, database: {summary.database or 'none'}", markup=False)


def _counts(summary: Any) -> dict[str, Any]:
    return {"releases": summary.releases, "blobs": summary.blobs,
            "blob_bytes": summary.blob_bytes, "database": summary.database}
