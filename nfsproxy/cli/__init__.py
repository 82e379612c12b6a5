"""`nfsj`: the command line. One module per subcommand; each parses its
flags and calls one library function. Expected errors print one line that
says what to do and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import typer

from ..proxyd import ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="nfs-journal: continuous data protection for NAS/NFS.")


@app.callback()
def _root() -> None:
    """nfs-journal: continuous data protection for NAS/NFS."""


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


from . import baseline, export, proxy, recoveryd, restore, status, up  # noqa: E402,F401  (register the subcommands)


def main() -> None:
    try:
        app()
    except ConfigError as e:
        typer.echo(f"nfsj: error: {e}", err=True)
        sys.exit(2)
