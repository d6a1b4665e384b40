"""shadow.py
=========

``sonoshot release``: after a shadow period, send (or discard) the SRs that were held.
"""

from __future__ import annotations

import getpass
from datetime import datetime

import click

from sonoshot.cli.common import Since, config_of, open_store


@click.command()
@click.option("--since", type=Since(), help="Results made at or after this time (ISO 8601 or an age).")
@click.option("--until", type=Since(), help="... and before this time.")
@click.option("--destination", help="Only this destination (default: every one).")
@click.option("--discard", is_flag=True, help="Withhold them for good instead: never sent, the studies settle.")
@click.pass_context
def release(ctx: click.Context, since: datetime | None, until: datetime | None, destination: str | None,
            discard: bool) -> None:
    """Release the SRs held in shadow mode (results made in [--since, --until)) to the outbox.

    Only each study's latest result is sent, once; a held SR that a later result superseded is
    withheld. The destinations must be in send mode (delivery.mode), or nothing would leave.
    """
    from sonoshot.db.outbox import discard_held, release_held

    delivery = config_of(ctx).delivery
    names = {d.name: d for d in delivery.destinations}
    if destination is not None and destination not in names:
        raise click.BadParameter(f"no destination {destination!r} in delivery.destinations", param_hint="--destination")
    chosen = [names[destination]] if destination else list(names.values())
    shadow = [d.name for d in chosen if delivery.mode_of(d) == "shadow"]
    if shadow and not discard:
        raise click.ClickException(f"destination(s) {', '.join(shadow)} are in shadow mode: set delivery.mode "
                                   "(or the destination's mode) to send and reload the daemon first")
    store = open_store(ctx)
    try:
        act = discard_held if discard else release_held
        counts = act(store, getpass.getuser(), since, until, destination)
    finally:
        store.dispose()
    if discard:
        click.echo(f"{counts.withheld} held SR deliveries withheld (never sent)")
    else:
        click.echo(f"{counts.released} held SR deliveries released; {counts.withheld} superseded ones withheld")
