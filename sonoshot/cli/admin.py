"""admin.py
========

Commands for IT admins: ``status``, ``studies``, ``resend``, ``route`` and ``echo``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sonoshot.cli.common import Since, config_of, open_store, text_table, utc_text
from sonoshot.db.lifecycle import StudyState

if TYPE_CHECKING:
    from sonoshot.db.queries import StudySummary


@click.command()
@click.argument("peer", metavar="AE@HOST:PORT")
@click.option("--timeout", "timeout_s", type=float, default=10.0, show_default=True, help="Seconds to wait.")
@click.pass_context
def echo(ctx: click.Context, peer: str, timeout_s: float) -> None:
    """Check a DICOM peer with C-ECHO (exit status 0 when it answers Success, else 1)."""
    from sonoshot.config import Destination
    from sonoshot.dicom_io.send import echo as send_echo

    title, _, address = peer.partition("@")
    host, _, port = address.rpartition(":")
    if not (title and host and port.isdigit() and 0 < int(port) < 65536):
        raise click.BadParameter(f"expected AE@HOST:PORT, got {peer!r}", param_hint="AE@HOST:PORT")
    outcome = send_echo(Destination(name=title, ae_title=title, host=host, port=int(port)),
                        config_of(ctx).network.ae_title, timeout_s=timeout_s)
    click.echo(outcome.detail)
    raise SystemExit(0 if outcome.ok else 1)



def _score(score: float | None) -> str | None:
    return None if score is None else f"{score:.3f}"


def _studiestext_table(studies: list[StudySummary]) -> str:
    return text_table(("STUDY INSTANCE UID", "STATE", "INSTANCES", "LAST RECEIVED", "SCORE", "VERDICT", "DELIVERY"),
                  [(s.study_instance_uid, s.state, s.instance_count, utc_text(s.last_received_at), _score(s.score),
                    s.verdict, s.delivery) for s in studies])


@click.command()
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True, help="Studies to list.")
@click.pass_context
def status(ctx: click.Context, limit: int) -> None:
    """Recent studies (state, score, verdict, delivery) and the depth of each queue."""
    from sonoshot.db import queries

    store = open_store(ctx)
    try:
        studies, depths = queries.recent_studies(store, limit=limit), queries.queue_depths(store)
    finally:
        store.dispose()
    click.echo(_studiestext_table(studies) if studies else "no studies yet")
    click.echo()
    click.echo(text_table(("QUEUE", "DEPTH"), list(depths.items())))


@click.command()
@click.option("--since", type=Since(), help="Studies received or changed since then (ISO 8601 or 24h, 7d...).")
@click.option("--state", type=click.Choice([s.value for s in StudyState]), help="Only studies in this state.")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most this many (newest first).")
@click.pass_context
def studies(ctx: click.Context, since: datetime | None, state: str | None, limit: int | None) -> None:
    """List studies, newest first, filtered by time and state."""
    from sonoshot.db import queries

    store = open_store(ctx)
    try:
        rows = queries.recent_studies(store, since=since, state=state, limit=limit)
    finally:
        store.dispose()
    click.echo(_studiestext_table(rows) if rows else "no matching studies")


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--calling-ae", default="", help="Calling AE title to match rules against.")
@click.option("--called-ae", default=None, help="Called AE title (default: network.ae_title).")
@click.pass_context
def route(ctx: click.Context, file: Path, calling_ae: str, called_ae: str | None) -> None:
    """Dry-run the routing rules on a DICOM file: print the rule that matches and its action."""
    from pydicom import dcmread

    from sonoshot.daemon.routing import route as match_rule

    config = config_of(ctx)
    header = dcmread(file, stop_before_pixels=True, force=True)
    rule = match_rule(header, calling_ae, called_ae or config.network.ae_title, config.routing.rules)
    click.echo(f"{rule.action}\t{rule.name}")


@click.command()
@click.argument("study_uid", required=False)
@click.option("--dead-letter", "all_dead", is_flag=True, help="Retry every dead-letter delivery.")
@click.pass_context
def resend(ctx: click.Context, study_uid: str | None, all_dead: bool) -> None:
    """Put a study's failed deliveries (or all dead-letter ones) back in the outbox, due now.

    The running daemon sends them on its next outbox sweep.
    """
    if bool(study_uid) == all_dead:
        raise click.UsageError("give either a STUDY_UID or --dead-letter")
    store = open_store(ctx)
    try:
        count = store.requeue_dead_letters(study_uid)
    finally:
        store.dispose()
    click.echo(f"{count} deliveries queued again")

