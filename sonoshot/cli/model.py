"""model.py
========

Detector commands: ``sonoshot fit``, ``sonoshot eval`` and ``sonoshot model pull``.
"""

from __future__ import annotations

from pathlib import Path

import click

from sonoshot.cli.common import config_of


@click.command()
@click.option("--normal", "normal_dir", type=click.Path(file_okay=False, path_type=Path),
              required=True, help="Folder of normal examples (DICOM or PNG/JPEG).")
@click.option("--abnormal", "abnormal_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of abnormal examples; omit for a normal-only detector.")
@click.option("--backbone", default=None, help="auto, biomedclip or efficientnet-lite0.")
@click.option("--seed", type=int, default=0, show_default=True, help="Training seed.")
@click.option("--scope", "scope_specs", multiple=True, metavar="KEYWORD=VALUE[,VALUE]",
              help="What the detector is for, e.g. BodyPartExamined=BREAST (repeatable); "
                   "instances outside it are not scored. Default: any.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Bundle folder to write.")
@click.pass_context
def fit(ctx: click.Context, normal_dir: Path, abnormal_dir: Path | None, backbone: str | None,
        seed: int, scope_specs: tuple[str, ...], out: Path) -> None:
    """Fit a few-shot detector bundle from example folders."""
    import dataclasses

    from tqdm import tqdm

    from sonoshot.model import (BackboneError, DetectorError, ScopeError, create_backbone,
                                fit_detector, parse_scope, save_bundle)
    from sonoshot.model.inputs import InputError, list_inputs, read_input

    config = config_of(ctx).detector
    if backbone:
        config = dataclasses.replace(config, backbone=backbone)
    try:
        scope = parse_scope(scope_specs)
    except ScopeError as exc:
        raise click.BadParameter(str(exc), param_hint="--scope") from exc
    try:
        files = {"normal": list_inputs(normal_dir),
                 "abnormal": list_inputs(abnormal_dir) if abnormal_dir else []}
        images = {label: [read_input(f, config.frames_per_cine)
                          for f in tqdm(paths, desc=f"reading {label}", unit="file")]
                  for label, paths in files.items()}
        model = create_backbone(config)
        detector = fit_detector(model, images["normal"], images["abnormal"], config, seed,
                                scope=scope)
        digest = save_bundle(detector, out)
    except (InputError, DetectorError, BackboneError) as exc:
        raise click.ClickException(str(exc)) from exc
    scope_text = "; ".join(f"{k}={','.join(v)}" for k, v in scope.items()) or "any"
    click.echo(f"wrote {out} ({detector.state.mode}, backbone {model.name}, "
               f"threshold {detector.threshold:.3f}, scope {scope_text}, sha256 {digest[:12]})")


@click.command(name="eval")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              required=True, help="Folder with images and manifest.csv (file,label,group).")
@click.option("--shots", default="1,2,4,8,16", show_default=True, help="Comma-separated k.")
@click.option("--seeds", type=click.IntRange(1), default=5, show_default=True,
              help="Random support draws per k.")
@click.option("--first-seed", type=click.IntRange(0), default=0, show_default=True,
              help="First draw (reported tables: 0; tuning: 100).")
@click.option("--protocol", type=click.Choice(["labelled", "normal-only", "both"]),
              default="labelled", show_default=True)
@click.option("--backbone", default=None, help="auto, biomedclip or efficientnet-lite0.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("var/cache/embeddings"), show_default=True,
              help="Embedding cache folder.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              required=True, help="Folder for report.json, report.md and ROC PNGs.")
@click.pass_context
def eval_(ctx: click.Context, data_dir: Path, shots: str, seeds: int, first_seed: int,
          protocol: str, backbone: str | None, cache_dir: Path, report_dir: Path) -> None:
    """Evaluate the detector, its ablations and baselines with k-shot draws."""
    import dataclasses

    from sonoshot.model import BackboneError, create_backbone
    from sonoshot.model.evaluate import evaluate
    from sonoshot.model.inputs import InputError

    config = config_of(ctx).detector
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
                 cache_dir, config.mask_annotations, first_seed)
    except (InputError, BackboneError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo((report_dir / "report.md").read_text())


@click.group()
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

