"""users.py
========

Web console accounts: a name, a role and an Argon2id password hash (hashing and checking live
in :mod:`sonoshot.console.auth`; this module only stores the hash). Failed logins are counted
per account and lock it for a while; every change is an audit event (``kind = user``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from sonoshot.db.models import Event, User, utcnow
from sonoshot.db.store import Store

ROLES = ("admin", "auditor", "clinician")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.@-]{0,63}")
LOCK_WINDOW = timedelta(minutes=15)


class UserError(ValueError):
    """An account name, role or operation that cannot be done (exists, unknown, bad name)."""


@dataclass(frozen=True)
class UserRef:
    id: int
    name: str
    role: str
    password_hash: str
    created_at: datetime
    failed_logins: int
    locked_until: datetime | None
    last_login_at: datetime | None


def _ref(row: User) -> UserRef:
    return UserRef(row.id, row.name, row.role, row.password_hash, row.created_at, row.failed_logins,
                   row.locked_until, row.last_login_at)


def check_name(name: str) -> str:
    """An account name: 1-64 letters, digits, ``_ . @ -``, starting with a letter.

    Raises
    ------
    UserError
        For anything else.
    """
    if not _NAME.fullmatch(name):
        raise UserError(f"user name {name!r}: expected 1-64 letters, digits, '_', '.', '@' or '-', "
                        "starting with a letter")
    return name


def check_role(role: str) -> str:
    """One of :data:`ROLES`.

    Raises
    ------
    UserError
        For anything else.
    """
    if role not in ROLES:
        raise UserError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    return role


def add_user(store: Store, name: str, role: str, password_hash: str, by: str) -> None:
    """Create an account.

    Raises
    ------
    UserError
        If the name or role is invalid or the name is taken.
    """
    check_name(name), check_role(role)
    with store.session() as s:
        if s.scalar(select(User.id).where(User.name == name)) is not None:
            raise UserError(f"user {name!r} exists already")
        s.add(User(name=name, role=role, password_hash=password_hash, failed_logins=0))
        s.add(Event(kind="user", outcome="added", detail={"user": name, "role": role, "by": by}))


def _existing(s, name: str) -> User:
    row = s.scalar(select(User).where(User.name == name).with_for_update())
    if row is None:
        raise UserError(f"no user {name!r}")
    return row


def set_password(store: Store, name: str, password_hash: str, by: str) -> None:
    """Replace an account's password hash (and unlock it).

    Raises
    ------
    UserError
        If there is no such user.
    """
    with store.session() as s:
        row = _existing(s, name)
        row.password_hash, row.failed_logins, row.locked_until = password_hash, 0, None
        s.add(Event(kind="user", outcome="password-changed", detail={"user": name, "by": by}))


def remove_user(store: Store, name: str, by: str) -> None:
    """Delete an account.

    Raises
    ------
    UserError
        If there is no such user.
    """
    with store.session() as s:
        _existing(s, name)
        s.execute(delete(User).where(User.name == name))
        s.add(Event(kind="user", outcome="removed", detail={"user": name, "by": by}))


def get_user(store: Store, name: str) -> UserRef | None:
    with store.read_session() as s:
        row = s.scalar(select(User).where(User.name == name))
        return None if row is None else _ref(row)


def list_users(store: Store) -> list[UserRef]:
    with store.read_session() as s:
        return [_ref(r) for r in s.scalars(select(User).order_by(User.name))]


def record_login(store: Store, name: str, ok: bool, max_failed: int, now: datetime | None = None) -> bool:
    """Count a login attempt of an existing account; returns whether the account is locked now.

    A success resets the count; ``max_failed`` failures lock the account for 15 minutes.
    """
    now = now or utcnow()
    with store.session() as s:
        row = s.scalar(select(User).where(User.name == name).with_for_update())
        if row is None:
            return False
        if ok:
            row.failed_logins, row.locked_until, row.last_login_at = 0, None, now
            return False
        row.failed_logins += 1
        if row.failed_logins >= max_failed:
            row.locked_until, row.failed_logins = now + LOCK_WINDOW, 0
            s.add(Event(kind="user", outcome="locked", detail={"user": name, "minutes": LOCK_WINDOW.seconds // 60}))
            return True
        return False
