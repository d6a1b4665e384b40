"""cli
===

The ``sonoshot`` command, one module per command group; each subcommand is a thin shell over
a library function. The configuration is loaded once (``--config`` or ``$SONOSHOT_CONFIG``)
and a bad key exits with 2.

| module | commands |
|---|---|
| :mod:`.serve` | ``serve`` |
| :mod:`.deid` | ``keygen``, ``anonymize`` |
| :mod:`.model` | ``fit``, ``eval``, ``model pull`` |
| :mod:`.admin` | ``status``, ``studies``, ``resend``, ``route``, ``echo`` |
| :mod:`.audit` | ``audit export`` |
| :mod:`.validation` | ``feedback``, ``performance``, ``drift`` |
| :mod:`.shadow` | ``release`` |
| :mod:`.users` | ``users add``, ``users passwd``, ``users remove``, ``users list`` |
"""

from __future__ import annotations

import sys

import click

from sonoshot import __version__
from sonoshot.cli import admin, audit, deid, model, serve, shadow, users, validation
from sonoshot.config import ConfigError

EXIT_CONFIG = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="SONOSHOT_CONFIG",
              help="TOML configuration file (default: $SONOSHOT_CONFIG, else built-in defaults).")
@click.version_option(__version__, prog_name="sonoshot")
def cli(config_path: str | None) -> None:
    """Few-shot anomaly detection for ultrasound, as a DICOM node in a PACS workflow."""


for _command in (serve.serve, deid.keygen, deid.anonymize, model.fit, model.eval_, model.model,
                 admin.status, admin.studies, admin.resend, admin.route, admin.echo, audit.audit,
                 validation.feedback, validation.performance, validation.drift, shadow.release, users.users):
    cli.add_command(_command)


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
