"""cli.py
======

The ``sonoshot`` command. Each subcommand is a thin shell over a library function; the
configuration is loaded once (``--config`` or ``$SONOSHOT_CONFIG``) and a bad key exits with 2.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import click

from sonoshot import __version__
from sonoshot.config import Config, ConfigError, load_config

EXIT_CONFIG = 2


def _config(ctx: click.Context) -> Config:
    """The configuration named by the group's ``--config``, loaded on first use."""
    root = ctx.find_root()
    if "config" not in root.meta:
        root.meta["config"] = load_config(root.params.get("config_path"))
    return root.meta["config"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="SONOSHOT_CONFIG",
              help="TOML configuration file (default: $SONOSHOT_CONFIG, else built-in defaults).")
@click.version_option(__version__, prog_name="sonoshot")
def cli(config_path: str | None) -> None:
    """Few-shot anomaly detection for ultrasound, as a DICOM node in a PACS workflow."""


@cli.command()
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run the daemon: receive, de-identify, detect, report and deliver."""
    from sonoshot.daemon.service import run_service

    raise SystemExit(run_service(_config(ctx)))


@cli.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the new key (refuses to overwrite).")
def keygen(out: Path) -> None:
    """Create a new secret key for keyed pseudonyms (32 random bytes, hex, mode 0600)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    click.echo(f"wrote {out}")


@cli.command()
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
                        _config(ctx).network.ae_title, timeout_s=timeout_s)
    click.echo(outcome.detail)
    raise SystemExit(0 if outcome.ok else 1)


@cli.command()
@click.argument("inputs", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the de-identified files and their JSON reports.")
@click.option("--what-if", is_flag=True, help="Print the de-identification policy and exit.")
@click.pass_context
def anonymize(ctx: click.Context, inputs: tuple[Path, ...], out_dir: Path | None, what_if: bool) -> None:
    """De-identify DICOM files or folders; exit 0 when all are clean, 3 when any is quarantined."""
    import json

    from sonoshot.dicom_io.deid import DeidKeyError, DeidPolicy, deidentify_file, load_key

    config = _config(ctx).deid
    policy = DeidPolicy.from_config(config)
    if what_if:
        click.echo("\n".join(policy.describe()))
        return
    if not inputs or out_dir is None:
        raise click.UsageError("give INPUT... and --out DIR (or --what-if)")
    try:
        key = load_key(config.key_file)
    except DeidKeyError as exc:
        raise click.ClickException(str(exc)) from exc
    out_dir.mkdir(parents=True, exist_ok=True)
    files = sorted({f for i in inputs for f in ([i] if i.is_file() else i.rglob("*")) if f.is_file()})
    quarantined = 0
    for number, path in enumerate(files):
        outcome = deidentify_file(path, out_dir, policy, key)
        name = outcome.sop_instance_uid or f"unreadable-{number}"
        (out_dir / f"{name}.json").write_text(json.dumps(outcome.report, indent=2, sort_keys=True))
        quarantined += not outcome.ok
        verdict = "clean" if outcome.ok else f"QUARANTINED ({outcome.reason})"
        click.echo(f"{path} -> {name}: {verdict}")
    click.echo(f"{len(files) - quarantined} clean, {quarantined} quarantined")
    raise SystemExit(3 if quarantined else 0)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 for configuration errors)."""
    try:
        cli.main(args=argv, prog_name="sonoshot", standalone_mode=False)
    except ConfigError as exc:
        click.echo(f"sonoshot: {exc}", err=True)
        return EXIT_CONFIG
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
