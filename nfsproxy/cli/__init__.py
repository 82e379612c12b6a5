"""`nfsj`: the command line. One module per subcommand; each parses its
flags and calls one library function. Expected errors print one line that
says what to do and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import typer

from ..config import default_map, load_config
from ..proxyd import ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  context_settings={"auto_envvar_prefix": "NFSJ"},
                  help="nfs-journal: continuous data protection for NAS/NFS.")


@app.callback()
def _root(ctx: typer.Context,
          config: str = typer.Option(None, "--config", envvar="NFSJ_CONFIG",
                                     help="TOML file of options (see README: Configuration).")) -> None:
    """nfs-journal: continuous data protection for NAS/NFS.

    Options come from flags, then NFSJ_<COMMAND>_<OPTION> environment
    variables, then the --config file, then defaults.
    """
    if config:
        ctx.default_map = default_map(load_config(config), command_options(ctx.command), source=config)


def command_options(group) -> dict[str, set[str]]:
    """Each subcommand's option names (as click stores them)."""
    return {name: {p.name for p in cmd.params} for name, cmd in group.commands.items()
            if hasattr(cmd, "params")}


def fail(message: str) -> None:
    """Print a one-line error and exit 2."""
    typer.echo(f"nfsj: error: {message}", err=True)
    raise typer.Exit(2)


def run_event_loop(main) -> None:
    """Run a daemon's coroutine on uvloop (libuv): the relay spends most of its
    time in socket calls, where uvloop is markedly cheaper than the default loop."""
    import uvloop
    uvloop.install()
    asyncio.run(main)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


from . import baseline, config, export, proxy, recoveryd, restore, status, up  # noqa: E402,F401  (register the subcommands)


def main() -> None:
    try:
        app()
    except ConfigError as e:
        typer.echo(f"nfsj: error: {e}", err=True)
        sys.exit(2)
