"""serve.py
========

``sonoshot serve``: the daemon.
"""

from __future__ import annotations

import click

from sonoshot.cli.common import config_of


@click.command()
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run the daemon: receive, de-identify, detect, report and deliver."""
    from sonoshot.daemon.service import run_service

    raise SystemExit(run_service(config_of(ctx), ctx.find_root().params.get("config_path")))

