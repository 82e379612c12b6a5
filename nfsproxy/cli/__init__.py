"""`nfsj`: the command line. One module per subcommand; each parses its
flags and calls one library function. Expected errors print one line that
says what to do and exit 2; anything else is a bug and keeps its traceback.

Start-up: a run loads the module of its own command only (catalog.py: the
other commands are neither imported nor built, and `nfsj --help` lists them
from the catalog), every command module imports only typer and light modules
at the top, and its heavy ones (gRPC, protobuf, RocksDB, the restore engine,
uvloop, prometheus, rich) inside the command function, so `nfsj --help` and
a quick command pay only for what they use (tests/unit/test_cli_startup.py
keeps it so). Help is plain click formatting: rich's would cost ~100 ms.
"""

import os
import sys

import typer

from nfsproxy.daemon.config import ConfigError, default_map, load_config
from . import plain_params
from .catalog import LazyGroup

plain_params.install()

app = typer.Typer(cls=LazyGroup, add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  context_settings={"auto_envvar_prefix": "NFSJ"},
                  help="nfs-journal: continuous data protection for NAS/NFS.")


@app.callback()
def _root(ctx: typer.Context,
          config: str = typer.Option(None, "--config", envvar="NFSJ_CONFIG",
                                     help="TOML file of options (see README: Configuration)."),
          log_format: str = typer.Option("text", "--log-format", envvar="NFSJ_LOG_FORMAT",
                                         help="Daemon logs on stderr: text or json (one object per line).")) -> None:
    """nfs-journal: continuous data protection for NAS/NFS.

    Options come from flags, then NFSJ_<COMMAND>_<OPTION> environment
    variables, then the --config file, then defaults.
    """
    if log_format not in ("text", "json"):
        fail(f"--log-format {log_format!r}: use text or json")
    _LOG_FORMAT[0] = log_format
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
    import asyncio

    import uvloop
    uvloop.install()
    asyncio.run(main)


def setup_logging(verbose: bool) -> None:
    """Log to stderr, as text or JSON lines (`--log-format`), with UTC timestamps."""
    from .logs import log_to_stderr

    log_to_stderr(verbose, _LOG_FORMAT[0])


_LOG_FORMAT = ["text"]
_SKIP_TEARDOWN = [False]


def skip_teardown() -> None:
    """Let ``main`` end this run with ``os._exit`` once the command has
    returned, skipping the interpreter's teardown: with gRPC loaded that
    took about 25 ms of `nfsj status`'s 135. Only for commands that leave
    no thread, open file or atexit work behind; output is flushed first.
    (Commands invoked in-process, as tests do, are not ended this way.)"""
    _SKIP_TEARDOWN[0] = True


def main() -> None:
    try:
        app()
    except ConfigError as e:
        typer.echo(f"nfsj: error: {e}", err=True)
        sys.exit(2)
    except SystemExit as e:
        code = 0 if e.code is None else e.code
        if _SKIP_TEARDOWN[0] and isinstance(code, int):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        raise
