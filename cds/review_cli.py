"""`veritrace review add-user`: local reviewer accounts for a box without a hospital IdP."""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer

from audit.review import hash_password
from audit.review.roles import Role
from cds.settings import Settings

review_app = typer.Typer(help="Compliance review web app (/review).")


@review_app.command("add-user")
def add_user(
    username: str,
    role: Annotated[list[Role], typer.Option("--role", help="May repeat")],
    name: Annotated[str, typer.Option(help="Display name")] = "",
    password: Annotated[
        str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True, help="Prompted if omitted")
    ] = "",
) -> None:
    """Add or replace a local account; the password is stored only as an scrypt hash (file mode 0600)."""
    if len(password) < 12:
        typer.echo("password must be at least 12 characters", err=True)
        raise typer.Exit(2)
    settings = Settings()
    settings.ensure_home()
    path = settings.resolved_review_users_file
    users = json.loads(path.read_text())["users"] if path.exists() else []
    users = [u for u in users if u["username"] != username]
    users.append(
        {
            "username": username,
            "name": name,
            "roles": [r.value for r in role],
            "password": hash_password(password),
        }
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"users": users}, handle, indent=2)
    typer.echo(f"{username}: {', '.join(r.value for r in role)} in {path}; restart `veritrace api` to apply")
