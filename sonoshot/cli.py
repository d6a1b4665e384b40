"""cli.py
======

The ``sonoshot`` command. Each subcommand is a thin shell over a library function; the
configuration is loaded once (``--config`` or ``$SONOSHOT_CONFIG``) and a bad key exits with 2.
"""

from __future__ import annotations

import os
import secrets
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sonoshot import __version__
from sonoshot.config import Config, ConfigError, load_config
from sonoshot.daemon.lifecycle import StudyState

if TYPE_CHECKING:
    from sonoshot.db.queries import StudySummary
    from sonoshot.db.store import Store

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

    raise SystemExit(run_service(_config(ctx), ctx.find_root().params.get("config_path")))


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


@cli.command()
@click.option("--normal", "normal_dir", type=click.Path(file_okay=False, path_type=Path),
              required=True, help="Folder of normal examples (DICOM or PNG/JPEG).")
@click.option("--abnormal", "abnormal_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of abnormal examples; omit for a normal-only detector.")
@click.option("--backbone", default=None, help="auto, biomedclip or efficientnet-lite0.")
@click.option("--seed", type=int, default=0, show_default=True, help="Training seed.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Bundle folder to write.")
@click.pass_context
def fit(ctx: click.Context, normal_dir: Path, abnormal_dir: Path | None, backbone: str | None,
        seed: int, out: Path) -> None:
    """Fit a few-shot detector bundle from example folders."""
    import dataclasses

    from tqdm import tqdm

    from sonoshot.model import BackboneError, DetectorError, create_backbone, fit_detector, save_bundle
    from sonoshot.model.inputs import InputError, list_inputs, read_input

    config = _config(ctx).detector
    if backbone:
        config = dataclasses.replace(config, backbone=backbone)
    try:
        files = {"normal": list_inputs(normal_dir),
                 "abnormal": list_inputs(abnormal_dir) if abnormal_dir else []}
        images = {label: [read_input(f, config.frames_per_cine)
                          for f in tqdm(paths, desc=f"reading {label}", unit="file")]
                  for label, paths in files.items()}
        model = create_backbone(config)
        detector = fit_detector(model, images["normal"], images["abnormal"], config, seed)
        digest = save_bundle(detector, out)
    except (InputError, DetectorError, BackboneError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {out} ({detector.state.mode}, backbone {model.name}, "
               f"threshold {detector.threshold:.3f}, sha256 {digest[:12]})")


@cli.command(name="eval")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              required=True, help="Folder with images and manifest.csv (file,label,group).")
@click.option("--shots", default="1,2,4,8,16", show_default=True, help="Comma-separated k.")
@click.option("--seeds", type=click.IntRange(1), default=5, show_default=True,
              help="Random support draws per k.")
@click.option("--protocol", type=click.Choice(["labelled", "normal-only", "both"]),
              default="labelled", show_default=True)
@click.option("--backbone", default=None, help="auto, biomedclip or efficientnet-lite0.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("var/cache/embeddings"), show_default=True,
              help="Embedding cache folder.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              required=True, help="Folder for report.json, report.md and ROC PNGs.")
@click.pass_context
def eval_(ctx: click.Context, data_dir: Path, shots: str, seeds: int, protocol: str,
          backbone: str | None, cache_dir: Path, report_dir: Path) -> None:
    """Evaluate the detector, its ablations and baselines with k-shot draws."""
    import dataclasses

    from sonoshot.model import BackboneError, create_backbone
    from sonoshot.model.evaluate import evaluate
    from sonoshot.model.inputs import InputError

    config = _config(ctx).detector
    if backbone:
        config = dataclasses.replace(config, backbone=backbone)
    try:
        ks = [int(k) for k in shots.split(",")]
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated integers, got {shots!r}",
                                 param_hint="--shots") from exc
    protocols = ["labelled", "normal-only"] if protocol == "both" else [protocol]
    try:
        evaluate(create_backbone(config), data_dir, ks, seeds, protocols, report_dir,
                 cache_dir, config.mask_annotations)
    except (InputError, BackboneError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo((report_dir / "report.md").read_text())


@cli.group()
def model() -> None:
    """Manage backbone files."""


@model.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to fill (then set detector.biomedclip_path to it).")
def pull(out: Path) -> None:
    """Download BiomedCLIP and its BiomedBERT tokenizer/config with huggingface_hub."""
    from sonoshot.model.hub import pull_biomedclip

    try:
        files = pull_biomedclip(out)
    except OSError as exc:
        raise click.ClickException(f"download failed: {exc}") from exc
    click.echo(f"wrote {len(files)} files to {out}")


# -- admin and audit -------------------------------------------------------------------------

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


def _store(ctx: click.Context) -> Store:
    """The daemon's existing database, read-only use; exits with a message when it is not there."""
    from sonoshot.db.queries import DatabaseNotReady, open_existing

    try:
        return open_existing(_config(ctx).database.url)
    except DatabaseNotReady as exc:
        raise click.ClickException(str(exc)) from exc


def _time(moment: datetime | None) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else "-"


def _table(header: tuple[str, ...], rows: list[tuple[object, ...]]) -> str:
    """Left-aligned columns, two spaces apart; None shows as '-'."""
    cells = [header, *[tuple("-" if v is None else str(v) for v in row) for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _score(score: float | None) -> str | None:
    return None if score is None else f"{score:.3f}"


def _studies_table(studies: list[StudySummary]) -> str:
    return _table(("STUDY INSTANCE UID", "STATE", "INSTANCES", "LAST RECEIVED", "SCORE", "VERDICT", "DELIVERY"),
                  [(s.study_instance_uid, s.state, s.instance_count, _time(s.last_received_at), _score(s.score),
                    s.verdict, s.delivery) for s in studies])


@cli.command()
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True, help="Studies to list.")
@click.pass_context
def status(ctx: click.Context, limit: int) -> None:
    """Recent studies (state, score, verdict, delivery) and the depth of each queue."""
    from sonoshot.db import queries

    store = _store(ctx)
    try:
        studies, depths = queries.recent_studies(store, limit=limit), queries.queue_depths(store)
    finally:
        store.dispose()
    click.echo(_studies_table(studies) if studies else "no studies yet")
    click.echo()
    click.echo(_table(("QUEUE", "DEPTH"), list(depths.items())))


@cli.command()
@click.option("--since", type=Since(), help="Studies received or changed since then (ISO 8601 or 24h, 7d...).")
@click.option("--state", type=click.Choice([s.value for s in StudyState]), help="Only studies in this state.")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most this many (newest first).")
@click.pass_context
def studies(ctx: click.Context, since: datetime | None, state: str | None, limit: int | None) -> None:
    """List studies, newest first, filtered by time and state."""
    from sonoshot.db import queries

    store = _store(ctx)
    try:
        rows = queries.recent_studies(store, since=since, state=state, limit=limit)
    finally:
        store.dispose()
    click.echo(_studies_table(rows) if rows else "no matching studies")


@cli.group()
def audit() -> None:
    """Audit trail exports for auditors (identifiers are UIDs and keyed pseudonyms only)."""


@audit.command(name="export")
@click.option("--since", type=Since(), help="Studies received or changed since then (ISO 8601 or 24h, 7d...).")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@click.pass_context
def audit_export(ctx: click.Context, since: datetime | None, fmt: str, out: Path | None) -> None:
    """Per study: received, completed, de-identified, scored and delivered times, model hash, outcome."""
    import csv
    import dataclasses
    import io
    import json

    from sonoshot.db.queries import AuditRow, audit_rows

    store = _store(ctx)
    try:
        rows = audit_rows(store, since)
    finally:
        store.dispose()
    fields = [f.name for f in dataclasses.fields(AuditRow)]
    records = [{k: _time(v) if isinstance(v, datetime) else v for k, v in dataclasses.asdict(r).items()}
               for r in rows]
    if fmt == "json":
        text = json.dumps(records, indent=2) + "\n"
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        text = buffer.getvalue()
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text)
        click.echo(f"wrote {len(records)} studies to {out}", err=True)


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--calling-ae", default="", help="Calling AE title to match rules against.")
@click.option("--called-ae", default=None, help="Called AE title (default: network.ae_title).")
@click.pass_context
def route(ctx: click.Context, file: Path, calling_ae: str, called_ae: str | None) -> None:
    """Dry-run the routing rules on a DICOM file: print the rule that matches and its action."""
    from pydicom import dcmread

    from sonoshot.daemon.routing import route as match_rule

    config = _config(ctx)
    header = dcmread(file, stop_before_pixels=True, force=True)
    rule = match_rule(header, calling_ae, called_ae or config.network.ae_title, config.routing.rules)
    click.echo(f"{rule.action}\t{rule.name}")


@cli.command()
@click.argument("study_uid", required=False)
@click.option("--dead-letter", "all_dead", is_flag=True, help="Retry every dead-letter delivery.")
@click.pass_context
def resend(ctx: click.Context, study_uid: str | None, all_dead: bool) -> None:
    """Put a study's failed deliveries (or all dead-letter ones) back in the outbox, due now.

    The running daemon sends them on its next outbox sweep.
    """
    if bool(study_uid) == all_dead:
        raise click.UsageError("give either a STUDY_UID or --dead-letter")
    store = _store(ctx)
    try:
        count = store.requeue_dead_letters(study_uid)
    finally:
        store.dispose()
    click.echo(f"{count} deliveries queued again")


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
