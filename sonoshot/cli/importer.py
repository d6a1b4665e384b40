"""importer.py
===========

``sonoshot import folder|s3|pacs``: an archive run. Existing studies are stored and queued in the
low-priority archive lane (see :mod:`sonoshot.daemon.archive`); the running daemon (or cluster)
processes them behind any live study. Restartable: run the same command again after an
interruption and each study is queued once. Prints a JSON report at the end.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from sonoshot.cli.common import config_of, open_store


def _progress(items, description: str, total: int):
    from tqdm import tqdm

    return tqdm(items, desc=description, total=total, unit="item", leave=False)


@contextlib.contextmanager
def _scratch(ctx: click.Context) -> Iterator[Path]:
    """A private folder under ``storage.work_dir`` for what is downloaded (PHI), removed after."""
    work = Path(config_of(ctx).storage.work_dir)
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder = Path(tempfile.mkdtemp(prefix=".import-", dir=work))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run(ctx: click.Context, how) -> None:
    """Open the daemon's database and object store, run ``how(importer)``, print the report."""
    from sonoshot.daemon.archive import ArchiveImport
    from sonoshot.daemon.service import node_name
    from sonoshot.dicom_io.deid import DeidKeyError, load_key, patient_pseudonym
    from sonoshot.objects import open_object_store

    config = config_of(ctx)
    store = open_store(ctx)
    try:
        if config.cluster.enabled:
            from sonoshot.db.cluster import apply_schema

            apply_schema(store.engine)  # the workers create it too; an import may come first
        try:
            key = load_key(config.deid.key_file)
        except DeidKeyError as exc:
            raise click.ClickException(f"deid.key_file: {exc}") from exc
        with ArchiveImport(store, open_object_store(config), lambda pid: patient_pseudonym(key, pid),
                           f"import@{node_name(config)}", _progress) as importer:
            report = how(importer)
    finally:
        store.dispose()
    click.echo(json.dumps(asdict(report), indent=2))


@click.group(name="import")
def import_() -> None:
    """Queue existing studies (a folder, an S3 prefix, a PACS) behind live work (the archive lane)."""


@import_.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.pass_context
def folder(ctx: click.Context, folder: Path) -> None:
    """Every DICOM file under FOLDER, grouped by study."""
    _run(ctx, lambda importer: importer.import_folder(folder))


@import_.command()
@click.argument("url", metavar="s3://BUCKET/PREFIX")
@click.pass_context
def s3(ctx: click.Context, url: str) -> None:
    """Every object under an S3 prefix, read with the [objects] endpoint and key."""
    from sonoshot.objects.s3 import S3Store

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not url.startswith("s3://") or not bucket:
        raise click.BadParameter(f"expected s3://BUCKET/PREFIX, got {url!r}", param_hint="URL")
    client = S3Store.from_config(config_of(ctx).objects).client
    with _scratch(ctx) as scratch:
        _run(ctx, lambda importer: importer.import_s3(client, bucket, prefix, scratch))


def _match(values: tuple[str, ...]) -> dict[str, Any]:
    match = {}
    for value in values:
        keyword, sep, wanted = value.partition("=")
        if not sep or not keyword:
            raise click.BadParameter(f"expected KEYWORD=VALUE, got {value!r}", param_hint="--match")
        match[keyword] = wanted
    return match


@import_.command()
@click.argument("peer", metavar="AE@HOST:PORT")
@click.option("--match", "matches", multiple=True, metavar="KEYWORD=VALUE",
              help="C-FIND key, repeatable (e.g. ModalitiesInStudy=US, StudyDate=20240101-20241231).")
@click.option("--move-ae", required=True, help="Our AE title the PACS moves studies to (configured in the PACS).")
@click.option("--move-port", type=click.IntRange(1, 65535), required=True, help="Port we receive the moves on.")
@click.option("--bind", "bind_address", default="127.0.0.1", show_default=True, help="Address to receive on.")
@click.pass_context
def pacs(ctx: click.Context, peer: str, matches: tuple[str, ...], move_ae: str, move_port: int,
         bind_address: str) -> None:
    """The studies a PACS finds (C-FIND), each moved to us (C-MOVE) and queued."""
    from sonoshot.config import Destination
    from sonoshot.dicom_io.retrieve import MoveDestination

    title, _, address = peer.partition("@")
    host, _, port = address.rpartition(":")
    if not (title and host and port.isdigit() and 0 < int(port) < 65536):
        raise click.BadParameter(f"expected AE@HOST:PORT, got {peer!r}", param_hint="AE@HOST:PORT")
    config = config_of(ctx)
    match = _match(matches)
    source = Destination(name=title, ae_title=title, host=host, port=int(port))
    with _scratch(ctx) as scratch:
        destination = MoveDestination(scratch, move_ae, move_port, bind_address)
        _run(ctx, lambda importer: importer.import_pacs(source, config.network.ae_title, match, destination))
