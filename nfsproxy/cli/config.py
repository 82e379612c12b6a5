"""`nfsj config check FILE`: validate a configuration file."""

from __future__ import annotations

import typer
import typer.main

from nfsproxy.daemon.config import default_map, load_config
from . import app, command_options

config_app = typer.Typer(help="Configuration files.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("check")
def check(path: str = typer.Argument(..., help="The TOML file to validate.")) -> None:
    """Validate FILE: every table is a command and every key one of its options."""
    commands = command_options(typer.main.get_command(app))
    commands.pop("config", None)
    found = default_map(load_config(path), commands, source=path)
    used = {name: values for name, values in found.items() if values}
    summary = "; ".join(f"{name}: {', '.join(sorted(values))}" for name, values in sorted(used.items()))
    typer.echo(f"{path}: ok ({summary or 'no options set'})")
