"""app.py
======

The console's pages. Every page needs a login; what a role may do is
:data:`sonoshot.console.auth.PERMISSIONS`. Every form carries a CSRF token (Flask-WTF's
``CSRFProtect`` refuses a POST without a valid one), every action (login, logout, feedback,
resend, export, a study opened) and every refusal is an audit event ``kind = console`` with
the user, role and client address. Pages show database contents only; the key image is the
pixels of the study's latest Secondary Capture key image (drawn from the de-identified frame the
detector scored; its header, which carries the patient's identity for the PACS, is not shown).
"""

from __future__ import annotations

import functools
import io
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, flash, g, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFError, CSRFProtect
from PIL import Image
from pydicom import dcmread

from sonoshot.config import Config
from sonoshot.db import console as views
from sonoshot.db import queries, users
from sonoshot.db.exports import audit_text, utc_text
from sonoshot.db.lifecycle import StudyState
from sonoshot.db.models import utcnow
from sonoshot.db.store import Store
from sonoshot.db.validation import UnknownStudy, feedback_of, labelled_results, observations, scanners
from sonoshot.dicom_io.pixels import UndecodableError, iter_frames
from sonoshot.dicom_io.spool import Spool
from sonoshot.console.auth import allowed, hash_password, needs_rehash, verify_password
from sonoshot.validation import plots
from sonoshot.validation.drift import drift_report, load_reference
from sonoshot.validation.feedback import FeedbackError, submit
from sonoshot.validation.performance import GROUPINGS, performance_report

KEY_IMAGE_SIDE = 512
_AGES = {"7d": 7, "30d": 30, "90d": 90, "365d": 365}


@dataclass(frozen=True)
class ConsoleContext:
    """What the pages read: the daemon's configuration, database, spool and pseudonym key."""

    config: Config
    store: Store
    spool: Spool
    key: bytes


def load_secret(path: Path) -> bytes:
    """The session-signing secret in ``path``, created (32 random bytes, mode 0600) when missing."""
    path = Path(path)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = path.open("xb")
        path.chmod(0o600)
        with fd:
            fd.write(secrets.token_bytes(32))
    return path.read_bytes()


def _since(value: str | None) -> tuple[str, datetime]:
    age = value if value in _AGES else "90d"
    return age, utcnow() - timedelta(days=_AGES[age])


def create_app(ctx: ConsoleContext) -> Flask:
    """The console as a WSGI application bound to ``ctx``."""
    app = Flask(__name__)
    tls = bool(ctx.config.console.tls.certificate)
    app.config.update(
        SECRET_KEY=load_secret(ctx.config.console.secret_key_file), SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict", SESSION_COOKIE_SECURE=tls, SESSION_COOKIE_NAME="sonoshot_session",
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=ctx.config.console.session_minutes),
        WTF_CSRF_TIME_LIMIT=None, WTF_CSRF_SSL_STRICT=tls, MAX_CONTENT_LENGTH=64 * 1024)
    store, limits = ctx.store, ctx.config.validation

    def audit(outcome: str, study_uid: str | None = None, **detail: Any) -> None:
        store.record_event("console", outcome, study_instance_uid=study_uid,
                           detail={"user": g.get("user"), "role": g.get("role"), "address": request.remote_addr,
                                   "path": request.path, **detail})

    @app.before_request
    def load_user() -> None:
        g.user = g.role = None
        name, seen = session.get("user"), session.get("seen", 0)
        if not name:
            return
        account = users.get_user(store, name)
        fresh = datetime.now(timezone.utc).timestamp() - seen < ctx.config.console.session_minutes * 60
        if account is None or account.role != session.get("role") or not fresh:
            session.clear()
            return
        g.user, g.role = account.name, account.role
        session["seen"] = datetime.now(timezone.utc).timestamp()

    CSRFProtect(app)  # after load_user, so a refusal is audited with the user it came from

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self'; style-src 'self'; "
                                                       "form-action 'self'; frame-ancestors 'none'")
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        if tls:
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        return response

    @app.context_processor
    def roles() -> dict[str, Any]:
        return {"user": g.get("user"), "role": g.get("role"), "can": lambda p: allowed(g.get("role"), p),
                "utc": utc_text}

    @app.errorhandler(CSRFError)
    def csrf_refused(error: CSRFError):
        audit("csrf-refused", reason=error.description)
        return render_template("refused.html", status=400, reason=f"Refused: {error.description}"), 400

    def needs(permission: str) -> Callable:
        def decorate(view: Callable) -> Callable:
            @functools.wraps(view)
            def wrapper(*args, **kwargs):
                if g.user is None:
                    return redirect(url_for("login", next=request.path))
                if not allowed(g.role, permission):
                    audit("refused", permission=permission)
                    return render_template("refused.html", status=403,
                                           reason=f"Refused: the {g.role} role may not do this ({permission})."), 403
                return view(*args, **kwargs)
            return wrapper
        return decorate

    @app.get("/login")
    def login():
        return render_template("login.html", next=request.args.get("next", ""))

    @app.post("/login")
    def login_post():
        name, password = request.form.get("name", ""), request.form.get("password", "")
        account = users.get_user(store, name)
        locked = account is not None and account.locked_until is not None and account.locked_until > utcnow()
        ok = verify_password(account.password_hash if account else None, password) and not locked
        if account is not None:
            users.record_login(store, account.name, ok, ctx.config.console.max_failed_logins)
        if not ok:
            g.user = account.name if account else None  # an unknown name is not stored: it may be anything
            audit("login-failed", reason="locked" if locked else "wrong name or password")
            message = "This account is locked for a while." if locked else "Wrong user name or password."
            return render_template("login.html", error=message, next=request.form.get("next", "")), 401
        if needs_rehash(account.password_hash):
            users.set_password(store, account.name, hash_password(password), account.name)
        session.clear()
        session.permanent = True
        session.update(user=account.name, role=account.role, seen=datetime.now(timezone.utc).timestamp())
        g.user, g.role = account.name, account.role
        audit("login")
        target = request.form.get("next", "")
        local = target.startswith("/") and not target.startswith("//") and "\\" not in target
        return redirect(target if local else url_for("index"))  # never to another site

    @app.post("/logout")
    def logout():
        if g.user:
            audit("logout")
        session.clear()
        return redirect(url_for("login"))

    @app.get("/")
    @needs("view")
    def index():
        return render_template("index.html", depths=queries.queue_depths(store),
                               by_state=queries.studies_by_state(store),
                               recent=queries.recent_studies(store, limit=10),
                               mode={d.name: ctx.config.delivery.mode_of(d) for d in ctx.config.delivery.destinations})

    @app.get("/studies")
    @needs("view")
    def studies():
        state = request.args.get("state") or None
        if state not in [None, *[s.value for s in StudyState]]:
            abort(400)
        return render_template("studies.html", rows=queries.recent_studies(store, state=state, limit=200),
                               state=state, states=[s.value for s in StudyState])

    @app.get("/studies/<uid>")
    @needs("view")
    def study(uid: str):
        detail = views.study_detail(store, uid)
        if detail is None:
            abort(404)
        audit("viewed", uid)
        return render_template("study.html", s=detail, labels=feedback_of(store, uid),
                               has_key_image=_key_image_path(ctx, detail) is not None)

    @app.get("/studies/<uid>/key-image.png")
    @needs("view")
    def key_image(uid: str):
        detail = views.study_detail(store, uid)
        path = _key_image_path(ctx, detail) if detail else None
        if path is None:
            abort(404)
        try:
            png = _render(path)
        except (UndecodableError, OSError, ValueError):
            abort(404)
        return Response(png, mimetype="image/png")

    @app.post("/studies/<uid>/feedback")
    @needs("feedback")
    def give_feedback(uid: str):
        label, finding = request.form.get("label", ""), request.form.get("finding", "")
        try:
            submit(store, ctx.spool, uid, label, g.user, "console", request.remote_addr or "unknown", finding or None,
                   request.form.get("source") or None)
        except UnknownStudy:
            abort(404)
        except FeedbackError as exc:
            audit("feedback-refused", uid, reason=str(exc))
            flash(str(exc), "error")
            return redirect(url_for("study", uid=uid))
        audit("feedback", uid, label=label)
        flash(f"Label '{label}' recorded.", "ok")
        return redirect(url_for("study", uid=uid))

    @app.get("/queues")
    @needs("queues")
    def queues():
        return render_template("queues.html", depths=queries.queue_depths(store),
                               failed=views.failed_deliveries(store), problems=views.problem_studies(store))

    @app.post("/queues/resend")
    @needs("resend")
    def resend():
        uid = request.form.get("study_uid") or None
        count = store.requeue_dead_letters(uid)
        audit("resend", uid, deliveries=count)
        flash(f"{count} deliveries queued again.", "ok")
        return redirect(url_for("queues"))

    def _performance(since: datetime, by: str | None):
        rows = labelled_results(store, since)
        return rows, performance_report(rows, by, limits.target_sensitivity, limits.bootstrap_resamples)

    @app.get("/performance")
    @needs("view")
    def performance():
        age, since = _since(request.args.get("since"))
        by = request.args.get("by") if request.args.get("by") in GROUPINGS else None
        rows, report = _performance(since, by)
        return render_template("performance.html", report=report, rows=rows, age=age, ages=list(_AGES), by=by,
                               groupings=GROUPINGS, target=limits.target_sensitivity)

    @app.get("/performance/<kind>.png")
    @needs("view")
    def performance_png(kind: str):
        _, since = _since(request.args.get("since"))
        rows, report = _performance(since, None)
        overall = report[0] if report else None
        if kind == "roc":
            return Response(plots.roc_png(rows, overall), mimetype="image/png")
        if kind == "scores":
            return Response(plots.histogram_png(rows, overall.threshold if overall else None), mimetype="image/png")
        abort(404)

    def _drift():
        reference = load_reference(ctx.config.detector.bundle)
        rows, known = observations(store), scanners(store)
        return rows, known, reference, drift_report(rows, known, reference, limits, utcnow())

    @app.get("/drift")
    @needs("view")
    def drift():
        _, _, reference, report = _drift()
        return render_template("drift.html", report=report, reference=reference is not None, limits=limits)

    @app.get("/drift/scores.png")
    @needs("view")
    def drift_png():
        rows, known, reference, report = _drift()
        start = min((d.current.start for d in report), default=utcnow())
        return Response(plots.drift_png([r for r in rows if r.at >= start], known, reference), mimetype="image/png")

    @app.get("/audit")
    @needs("audit")
    def audit_page():
        return render_template("audit.html", events=views.audit_events(store, kinds=("console", "feedback", "user")),
                               ages=list(_AGES))

    @app.get("/audit/export")
    @needs("audit")
    def audit_export():
        fmt = request.args.get("format", "csv")
        if fmt not in ("csv", "json"):
            abort(400)
        age, since = _since(request.args.get("since"))
        rows = queries.audit_rows(store, since)
        audit("export", format=fmt, since=age, studies=len(rows))
        name = f"sonoshot-audit-{utcnow():%Y%m%dT%H%M%SZ}.{fmt}"
        return Response(audit_text(rows, fmt), mimetype="text/csv" if fmt == "csv" else "application/json",
                        headers={"Content-Disposition": f"attachment; filename={name}"})

    return app


def _key_image_path(ctx: ConsoleContext, detail: views.StudyDetail) -> Path | None:
    """The key image of the study's latest result that has one, while the spool keeps it."""
    for result in detail.results:  # newest first
        if result.key_image_path:
            path = ctx.spool.path(result.key_image_path)
            return path if path.is_file() else None
    return None


def _render(path: Path) -> bytes:
    """The key image's pixels as a PNG, at most :data:`KEY_IMAGE_SIDE` pixels a side."""
    (frame,) = iter_frames(dcmread(path), [0])
    image = Image.fromarray(frame)
    image.thumbnail((KEY_IMAGE_SIDE, KEY_IMAGE_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
