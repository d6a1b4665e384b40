"""users.py
========

``sonoshot users``: web console accounts (admin, auditor, clinician). Passwords are read from a
prompt (twice) or, with ``--password-stdin``, from the first line of standard input; only their
Argon2id hash is stored.
"""

from __future__ import annotations

import getpass
import sys

import click

from sonoshot.cli.common import open_store, text_table, utc_text

MIN_PASSWORD = 12


def _password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    if len(password) < MIN_PASSWORD:
        raise click.ClickException(f"the password must have at least {MIN_PASSWORD} characters")
    return password


def _change(ctx: click.Context, action, *args) -> None:
    """Run a :mod:`sonoshot.db.users` change on the daemon's database; a refusal exits with its message."""
    from sonoshot.db.users import UserError

    store = open_store(ctx)
    try:
        action(store, *args, getpass.getuser())
    except UserError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.dispose()


@click.group()
def users() -> None:
    """Web console accounts."""


@users.command(name="add")
@click.argument("name")
@click.option("--role", type=click.Choice(["admin", "auditor", "clinician"]), required=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_context
def add(ctx: click.Context, name: str, role: str, password_stdin: bool) -> None:
    """Create an account NAME with a ROLE."""
    from sonoshot.console.auth import hash_password
    from sonoshot.db.users import UserError, add_user, check_name

    try:
        check_name(name)
    except UserError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from exc
    _change(ctx, add_user, name, role, hash_password(_password(password_stdin)))
    click.echo(f"user {name} ({role}) added")


@users.command(name="passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_context
def passwd(ctx: click.Context, name: str, password_stdin: bool) -> None:
    """Set a new password for NAME (and unlock it)."""
    from sonoshot.console.auth import hash_password
    from sonoshot.db.users import set_password

    _change(ctx, set_password, name, hash_password(_password(password_stdin)))
    click.echo(f"password of {name} changed")


@users.command(name="remove")
@click.argument("name")
@click.pass_context
def remove(ctx: click.Context, name: str) -> None:
    """Delete the account NAME."""
    from sonoshot.db.users import remove_user

    _change(ctx, remove_user, name)
    click.echo(f"user {name} removed")


@users.command(name="list")
@click.pass_context
def list_(ctx: click.Context) -> None:
    """Accounts, roles and last logins."""
    from sonoshot.db.users import list_users

    store = open_store(ctx)
    try:
        rows = list_users(store)
    finally:
        store.dispose()
    click.echo(text_table(("USER", "ROLE", "CREATED", "LAST LOGIN", "LOCKED UNTIL"),
                          [(u.name, u.role, utc_text(u.created_at), utc_text(u.last_login_at),
                            utc_text(u.locked_until) if u.locked_until else None) for u in rows])
               if rows else "no users")
