"""deid.py
=======

De-identification commands: ``sonoshot keygen`` and ``sonoshot anonymize``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import click

from sonoshot.cli.common import config_of


@click.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the new key (refuses to overwrite).")
def keygen(out: Path) -> None:
    """Create a new secret key for keyed pseudonyms (32 random bytes, hex, mode 0600)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    click.echo(f"wrote {out}")



@click.command()
@click.argument("inputs", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the de-identified files and their JSON reports.")
@click.option("--what-if", is_flag=True, help="Print the de-identification policy and exit.")
@click.pass_context
def anonymize(ctx: click.Context, inputs: tuple[Path, ...], out_dir: Path | None, what_if: bool) -> None:
    """De-identify DICOM files or folders; exit 0 when all are clean, 3 when any is quarantined."""
    import json

    from sonoshot.dicom_io.deid import DeidKeyError, DeidPolicy, deidentify_file, load_key

    config = config_of(ctx).deid
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

