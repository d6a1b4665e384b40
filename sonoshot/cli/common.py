"""common.py
=========

What every command module shares: the configuration of the root group (loaded once, so a bad
key exits with 2 wherever it is first needed), the database for admin commands, time
arguments and plain-text tables.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import click

from sonoshot.config import Config, load_config
from sonoshot.db.exports import utc_text

__all__ = ["Since", "config_of", "open_store", "text_table", "utc_text"]

if TYPE_CHECKING:
    from sonoshot.db.store import Store


def config_of(ctx: click.Context) -> Config:
    """The configuration named by the root group's ``--config``, loaded on first use."""
    root = ctx.find_root()
    if "config" not in root.meta:
        root.meta["config"] = load_config(root.params.get("config_path"))
    return root.meta["config"]


_SINCE_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class Since(click.ParamType):
    """A point in time: ISO 8601 (UTC unless it has an offset) or an age such as 30m, 24h, 7d, 2w."""

    name = "ISO|AGE"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        unit = _SINCE_UNITS.get(text[-1:].lower())
        if unit and text[:-1].isdigit():
            return datetime.now(timezone.utc) - timedelta(seconds=int(text[:-1]) * unit)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"expected an ISO 8601 time or an age like 24h or 7d, got {text!r}", param, ctx)
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def open_store(ctx: click.Context) -> Store:
    """The daemon's existing database, read-only use; exits with a message when it is not there."""
    from sonoshot.db.queries import DatabaseNotReady, open_existing

    try:
        return open_existing(config_of(ctx).database.url)
    except DatabaseNotReady as exc:
        raise click.ClickException(str(exc)) from exc


def text_table(header: tuple[str, ...], rows: list[tuple[object, ...]]) -> str:
    """Left-aligned columns, two spaces apart; None shows as '-'."""
    cells = [header, *[tuple("-" if v is None else str(v) for v in row) for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)

