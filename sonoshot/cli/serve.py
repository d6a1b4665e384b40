"""serve.py
========

``sonoshot serve``: the daemon, in one role (``all`` by default: everything in one process).
"""

from __future__ import annotations

import click

from sonoshot.cli.common import config_of
from sonoshot.daemon import ROLES


@click.command()
@click.option("--role", type=click.Choice(ROLES), default="all", show_default=True,
              help="What this process runs; roles other than 'all' need [cluster] enabled = true.")
@click.option("--queues", default="", metavar="Q1,Q2",
              help="Worker or deliverer: the queues to take (deid, detect, archive, archive-detect, "
                   "deliver-<destination>); "
                   "default: all of the role's.")
@click.pass_context
def serve(ctx: click.Context, role: str, queues: str) -> None:
    """Run the daemon: receive, de-identify, detect, report and deliver."""
    from sonoshot.daemon.service import run_service

    chosen = tuple(q.strip() for q in queues.split(",") if q.strip())
    raise SystemExit(run_service(config_of(ctx), ctx.find_root().params.get("config_path"), role, chosen))
