"""validation.py
=============

Validating the detector at a site: ``feedback`` (ground truth in, one study or a CSV),
``performance`` (local AUROC, sensitivity, specificity, PPV/NPV, a threshold for a target
sensitivity, PNGs) and ``drift`` (per scanner and week against the bundle's validation scores).
"""

from __future__ import annotations

import getpass
import json
import socket
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import click

from sonoshot.cli.common import Since, config_of, open_store, text_table, utc_text


def _who() -> tuple[str, str]:
    return getpass.getuser(), socket.gethostname()


def _number(value: float | None, digits: int = 3) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


@click.command()
@click.argument("study_uid", required=False)
@click.option("--label", type=click.Choice(["normal", "abnormal"], case_sensitive=False),
              help="The study's ground truth.")
@click.option("--finding", help="Short finding text (refused if it holds PHI, a date or an ID).")
@click.option("--source", help="Where the label comes from: ris, pathology, radiologist... (a short token).")
@click.option("--csv", "csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Import study_instance_uid,label[,source] rows instead (all or nothing).")
@click.pass_context
def feedback(ctx: click.Context, study_uid: str | None, label: str | None, finding: str | None, source: str | None,
             csv_file: Path | None) -> None:
    """Record ground truth: one study (STUDY_UID --label) or a CSV file (--csv FILE).

    Every label is an audit event naming the OS user and host that gave it.
    """
    from sonoshot.db.validation import UnknownStudy
    from sonoshot.dicom_io.spool import Spool
    from sonoshot.validation.feedback import FeedbackError, parse_csv, submit

    if bool(study_uid) == bool(csv_file):
        raise click.UsageError("give either STUDY_UID --label LABEL or --csv FILE")
    if study_uid and not label:
        raise click.UsageError("--label is required with STUDY_UID")
    if csv_file and finding:
        raise click.UsageError("--finding is for one study; a CSV import carries labels only")
    config = config_of(ctx)
    user, host = _who()
    store = open_store(ctx)
    try:
        spool = Spool(config.storage.spool_dir, config.storage.fsync)
        if study_uid:
            submit(store, spool, study_uid, label, user, "cli", host, finding, source)
            click.echo(f"{study_uid}: {label.lower()} recorded")
            return
        rows = parse_csv(csv_file.read_text(encoding="utf-8-sig"), source)
        unknown = [f"line {r.line}: {r.study_instance_uid}" for r in rows if store.study(r.study_instance_uid) is None]
        if unknown:
            raise FeedbackError("unknown studies, nothing imported: " + "; ".join(unknown))
        for row in rows:
            submit(store, spool, row.study_instance_uid, row.label, user, "csv", f"{host}:{csv_file.name}",
                   source=row.source)
        click.echo(f"{len(rows)} labels imported from {csv_file}")
    except (FeedbackError, UnknownStudy) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.dispose()


def _rate_text(rate) -> str:
    if rate.value is None:
        return "-"
    low, high = rate.interval
    return f"{rate.value:.3f} ({low:.2f}-{high:.2f}) {rate.successes}/{rate.total}"


@click.command()
@click.option("--since", type=Since(), default="90d", show_default=True, help="Results made since (ISO or age).")
@click.option("--until", type=Since(), help="... and before this time.")
@click.option("--by", type=click.Choice(["scanner", "organ", "bundle"]), help="Also per group.")
@click.option("--target-sensitivity", type=click.FloatRange(0.01, 1.0), help="Default: validation.target_sensitivity.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--plots", "plot_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write roc.png and scores.png into this folder.")
@click.pass_context
def performance(ctx: click.Context, since: datetime, until: datetime | None, by: str | None,
                target_sensitivity: float | None, fmt: str, plot_dir: Path | None) -> None:
    """Local performance on the labelled studies: AUROC (bootstrap 95 % CI), sensitivity,
    specificity, PPV and NPV at the reported threshold, and the threshold for a target sensitivity."""
    from sonoshot.db.validation import labelled_results
    from sonoshot.validation import plots
    from sonoshot.validation.performance import performance_report

    config = config_of(ctx).validation
    target = target_sensitivity or config.target_sensitivity
    store = open_store(ctx)
    try:
        rows = labelled_results(store, since, until)
    finally:
        store.dispose()
    report = performance_report(rows, by, target, config.bootstrap_resamples)
    if plot_dir is not None:
        plot_dir.mkdir(parents=True, exist_ok=True)
        overall = report[0] if report else None
        (plot_dir / "roc.png").write_bytes(plots.roc_png(rows, overall))
        (plot_dir / "scores.png").write_bytes(plots.histogram_png(rows, overall.threshold if overall else None))
    if fmt == "json":
        click.echo(json.dumps({"since": utc_text(since), "until": utc_text(until) if until else None, "by": by,
                               "labelled_studies": len(rows), "groups": [p.to_dict() for p in report]}, indent=2))
        return
    if not report:
        click.echo("no labelled studies with a result in that period")
        return
    click.echo(text_table(
        ("GROUP", "STUDIES", "ABN/NORM", "AUROC (95% CI)", "THRESHOLD", "SENSITIVITY", "SPECIFICITY", "PPV", "NPV"),
        [(p.group, p.studies, f"{p.abnormal}/{p.normal}",
          f"{p.auroc:.3f} ({p.auroc_ci[0]:.3f}-{p.auroc_ci[1]:.3f})" if p.auroc is not None else None,
          _number(p.threshold), _rate_text(p.at_threshold.sensitivity), _rate_text(p.at_threshold.specificity),
          _rate_text(p.at_threshold.ppv), _rate_text(p.at_threshold.npv)) for p in report]))
    click.echo()
    click.echo(text_table(
        ("GROUP", f"THRESHOLD FOR SENSITIVITY >= {target:g}", "SENSITIVITY", "SPECIFICITY"),
        [(p.group, _number(p.target_threshold), _rate_text(p.at_target.sensitivity) if p.at_target else None,
          _rate_text(p.at_target.specificity) if p.at_target else None) for p in report]))


def drift_records(report) -> list[dict]:
    """Plain dicts of a drift report (scanner attributes, current window, weekly history)."""
    def window(w) -> dict:
        out = asdict(w)
        out["start"], out["end"] = utc_text(w.start), utc_text(w.end)
        out["quarantine_share"], out["flagged"] = w.quarantine_share, w.flagged
        return out

    return [{"scanner": {"id": d.scanner.id, **asdict(d.scanner.device),
                         "first_seen_at": utc_text(d.scanner.first_seen_at)},
             "current": window(d.current), "weeks": [window(w) for w in d.weeks]} for d in report]


@click.command()
@click.option("--since", type=Since(), help="Current window from (default: validation.drift_days ago).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the per-scanner score distributions as a PNG.")
@click.pass_context
def drift(ctx: click.Context, since: datetime | None, fmt: str, plot_file: Path | None) -> None:
    """Scanner drift: scores, brightness and size against the bundle's validation sample, and
    the share quarantined, per scanner (current window, then per ISO week). Exit 3 if any drifts."""
    from sonoshot.db.validation import observations, scanners
    from sonoshot.validation import plots
    from sonoshot.validation.drift import drift_report, load_reference

    config = config_of(ctx)
    store = open_store(ctx)
    try:
        rows, known = observations(store), scanners(store)
    finally:
        store.dispose()
    reference = load_reference(config.detector.bundle)
    now = datetime.now(timezone.utc)
    report = drift_report(rows, known, reference, config.validation, now, since)
    if plot_file is not None:
        start = report[0].current.start if report else now
        plot_file.write_bytes(plots.drift_png([r for r in rows if r.at >= start], known, reference))
    if fmt == "json":
        click.echo(json.dumps({"reference": reference is not None, "scanners": drift_records(report)}, indent=2))
    elif not report:
        click.echo("no scanner seen yet")
    else:
        if reference is None:
            click.echo("no reference: detector.bundle is unset or predates validation scores (fit it again)")
        click.echo(text_table(
            ("SCANNER", "DEVICE", "INSTANCES", "QUARANTINED", "SCORE PSI", "SCORE KS P", "BRIGHTNESS", "SIZE", "VERDICT"),
            [(d.scanner.id, d.scanner.device.describe(), d.current.instances, f"{d.current.quarantine_share:.0%}",
              _number(d.current.scores.shift) if d.current.scores else None,
              f"{d.current.scores.ks_p:.2g}" if d.current.scores else None,
              f"{d.current.brightness.median:.0f} ({d.current.brightness.shift:+.0%})" if d.current.brightness else None,
              f"{d.current.size.median:.0f} ({d.current.size.shift:+.0%})" if d.current.size else None,
              d.current.verdict + (f": {', '.join(d.current.reasons)}" if d.current.reasons else ""))
             for d in report]))
    if any(d.current.flagged for d in report):
        raise SystemExit(3)
