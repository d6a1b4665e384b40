"""audit.py
========

Commands for auditors: ``sonoshot audit export``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from sonoshot.cli.common import Since, open_store


@click.group()
def audit() -> None:
    """Audit trail exports for auditors (identifiers are UIDs and keyed pseudonyms only)."""


@audit.command(name="export")
@click.option("--since", type=Since(), help="Studies received or changed since then (ISO 8601 or 24h, 7d...).")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@click.pass_context
def audit_export(ctx: click.Context, since: datetime | None, fmt: str, out: Path | None) -> None:
    """Per study: received, completed, de-identified, scored and delivered times, model hash, outcome."""
    from sonoshot.db.exports import audit_text
    from sonoshot.db.queries import audit_rows

    store = open_store(ctx)
    try:
        rows = audit_rows(store, since)
    finally:
        store.dispose()
    text = audit_text(rows, fmt)
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text)
        click.echo(f"wrote {len(rows)} studies to {out}", err=True)

