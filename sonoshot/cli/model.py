"""model.py
========

Detector commands: ``sonoshot fit``, ``sonoshot eval`` and ``sonoshot model pull``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from sonoshot.cli.common import config_of
from sonoshot.config import DetectorConfig

PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")


def _compute_options(command: Callable) -> Callable:
    """``--precision`` and ``--threads``, defaulting to ``detector.precision`` / ``.threads``."""
    command = click.option(
        "--threads", type=click.IntRange(0, 1024), default=None,
        help="torch intra-op threads; 0: one core less than available [detector.threads]")(command)
    return click.option(
        "--precision", type=click.Choice(PRECISION_CHOICES), default=None,
        help="backbone precision; auto: bf16 where the CPU/GPU has it, else fp32 "
             "[detector.precision]")(command)


def _detector_config(ctx: click.Context, backbone: str | None, precision: str | None,
                     threads: int | None) -> DetectorConfig:
    """``[detector]`` with the command's overrides, torch threads applied.

    Raises
    ------
    click.BadParameter
        If fp16 is asked for on a device that is not CUDA.
    """
    import dataclasses

    from sonoshot.model.runtime import apply_threads

    config = config_of(ctx).detector
    overrides = {k: v for k, v in (("backbone", backbone), ("precision", precision),
                                   ("threads", threads)) if v is not None and v != ""}
    config = dataclasses.replace(config, **overrides)
    if config.precision == "fp16" and not config.device.startswith("cuda"):
        raise click.BadParameter(f"fp16 needs a CUDA detector.device, not {config.device!r}",
                                 param_hint="--precision")
    apply_threads(config.threads)
    return config


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
@_compute_options
@click.pass_context
def fit(ctx: click.Context, normal_dir: Path, abnormal_dir: Path | None, backbone: str | None,
        seed: int, scope_specs: tuple[str, ...], out: Path, precision: str | None,
        threads: int | None) -> None:
    """Fit a few-shot detector bundle from example folders (it records the precision it was
    fitted at)."""
    from tqdm import tqdm

    from sonoshot.model import (BackboneError, DetectorError, ScopeError, create_backbone,
                                fit_detector, parse_scope, save_bundle)
    from sonoshot.model.inputs import InputError, list_inputs, read_input

    config = _detector_config(ctx, backbone, precision, threads)
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
    click.echo(f"wrote {out} ({detector.state.mode}, backbone {model.name} at {model.precision}, "
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
@_compute_options
@click.pass_context
def eval_(ctx: click.Context, data_dir: Path, shots: str, seeds: int, first_seed: int,
          protocol: str, backbone: str | None, cache_dir: Path, report_dir: Path,
          precision: str | None, threads: int | None) -> None:
    """Evaluate the detector, its ablations and baselines with k-shot draws."""
    import torch

    from sonoshot.model import BackboneError, create_backbone
    from sonoshot.model.evaluate import evaluate
    from sonoshot.model.inputs import InputError

    config = _detector_config(ctx, backbone, precision, threads)
    try:
        ks = [int(k) for k in shots.split(",")]
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated integers, got {shots!r}",
                                 param_hint="--shots") from exc
    protocols = ["labelled", "normal-only"] if protocol == "both" else [protocol]
    try:
        model = create_backbone(config)
        evaluate(model, data_dir, ks, seeds, protocols, report_dir, cache_dir,
                 config.mask_annotations, first_seed)
    except (InputError, BackboneError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{model.name} at {model.precision}, {torch.get_num_threads()} torch threads\n")
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

