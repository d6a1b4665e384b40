"""auth.py
=======

Passwords and roles. Hashes are Argon2id with argon2-cffi's default (RFC 9106 low-memory)
parameters; a hash made with older parameters is re-made at the next successful login.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher()
#: Verified against when the account does not exist, so a wrong name costs as much as a wrong password.
_DUMMY = _HASHER.hash("sonoshot: not an account")

#: What each role may do in the console.
PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({"view", "queues", "resend"}),
    "auditor": frozenset({"view", "queues", "audit"}),
    "clinician": frozenset({"view", "feedback"}),
}


def hash_password(password: str) -> str:
    """An Argon2id hash of ``password`` (with its salt and parameters)."""
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches ``password_hash``; None (no such account) never matches,
    at the same cost."""
    try:
        _HASHER.verify(password_hash or _DUMMY, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return password_hash is not None


def needs_rehash(password_hash: str) -> bool:
    return _HASHER.check_needs_rehash(password_hash)


def allowed(role: str | None, permission: str) -> bool:
    """Whether ``role`` has ``permission`` (see :data:`PERMISSIONS`)."""
    return permission in PERMISSIONS.get(role or "", frozenset())
