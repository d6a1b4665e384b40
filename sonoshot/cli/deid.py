"""deid.py
=======

De-identification commands: ``sonoshot keygen`` and ``sonoshot anonymize``.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sonoshot.cli.common import config_of

if TYPE_CHECKING:
    from sonoshot.dicom_io.deid import DeidOutcome, DeidPolicy


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
@click.option("--what-if", is_flag=True,
              help="Print the de-identification policy, or with INPUT... the keep-area method each file would get.")
@click.pass_context
def anonymize(ctx: click.Context, inputs: tuple[Path, ...], out_dir: Path | None, what_if: bool) -> None:
    """De-identify DICOM files or folders; exit 0 when all are clean, 3 when any is quarantined.

    Each file is reported with its keep-area method (regions, clipped regions, device mask,
    text-only) and the number of burned-in text boxes blanked; a file that cannot be cleaned is
    quarantined with its reason code and the batch goes on.
    """
    from sonoshot.dicom_io.deid import DeidKeyError, DeidPolicy, load_key

    config = config_of(ctx).deid
    policy = DeidPolicy.from_config(config)
    files = sorted({f for i in inputs for f in ([i] if i.is_file() else i.rglob("*")) if f.is_file()})
    if what_if:
        click.echo("\n".join(_what_if(files, policy) if files else policy.describe()))
        return
    if not inputs or out_dir is None:
        raise click.UsageError("give INPUT... and --out DIR (or --what-if)")
    try:
        key = load_key(config.key_file)
    except DeidKeyError as exc:
        raise click.ClickException(str(exc)) from exc
    out_dir.mkdir(parents=True, exist_ok=True)
    quarantined = 0
    for number, path in enumerate(files):
        outcome = _deidentify_one(path, out_dir, policy, key)
        name = outcome.sop_instance_uid or f"unreadable-{number}"
        (out_dir / f"{name}.json").write_text(json.dumps(outcome.report, indent=2, sort_keys=True))
        quarantined += not outcome.ok
        boxes = f"{outcome.text_boxes} text box(es) blanked"
        if outcome.ok:
            verdict = f"clean, method {outcome.method}, {boxes}"
        else:
            code = outcome.reason_code.value if outcome.reason_code else "quarantined"
            verdict = f"QUARANTINED [{code}] ({outcome.reason})"
        click.echo(f"{path} -> {name}: {verdict}")
    click.echo(f"{len(files) - quarantined} clean, {quarantined} quarantined")
    raise SystemExit(3 if quarantined else 0)


def _deidentify_one(path: Path, out_dir: Path, policy: DeidPolicy, key: bytes) -> DeidOutcome:
    """:func:`deidentify_file`, with any exception turned into a quarantine so the batch goes on."""
    from sonoshot.dicom_io.deid import DeidOutcome, deidentify_file

    try:
        return deidentify_file(path, out_dir, policy, key)
    except Exception as exc:  # noqa: BLE001 - reported per file, named by type only (no PHI)
        return DeidOutcome.internal_error(exc)


def _what_if(files: list[Path], policy: DeidPolicy) -> list[str]:
    """One line per file: the keep-area method it would get, from its header alone."""
    from sonoshot.dicom_io.deid import planned_method

    lines = []
    for path in files:
        try:
            area = planned_method(path, policy)
        except Exception as exc:  # noqa: BLE001 - a file that cannot be planned is named, not fatal
            lines.append(f"{path}: cannot be read ({type(exc).__name__})")
            continue
        notes = "".join(f"; {n}" for n in area.notes)
        lines.append(f"{path}: {area.method} ({area.source}{notes}), then text detection inside")
    return lines
