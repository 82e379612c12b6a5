"""The command catalog: every `nfsj` command's module and one-line summary,
and the click group that loads a command's module only when that command runs.

typer builds every command it knows before it runs one: it imports the
module, reads the function's signature and type hints and makes its click
parameters. For one command that is the only work it needs; for all twelve
it is most of `nfsj`'s own start-up. So ``nfsj status`` loads status.py and
nothing of the other commands, and ``nfsj --help`` lists the summaries below
without loading any command. tests/unit/test_cli_startup.py checks that each
summary is the short help its command's docstring gives.
"""

from collections.abc import Callable, Iterator, Mapping

from typer import _click
from typer.core import TyperGroup

__all__ = ["COMMANDS", "LazyGroup"]

#: name -> (module under nfsproxy.cli, summary), in the order --help lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "baseline": ("baseline", "Read the whole export into the journal; the earliest restorable moment "
                             "is the end of the first one."),
    "cat": ("cat", "Write one file's bytes as they were at TIME to stdout."),
    "export": ("export", "Serve the export as it was at TIME, read-only, over NFSv3 (nothing is "
                         "written out first)."),
    "history": ("history", "What changed PATH, when, from which client and uid."),
    "proxy": ("proxy", "Relay NFS to the NAS and journal every mutation."),
    "recoveryd": ("recoveryd", "Receive journal records from proxies and keep them in RocksDB."),
    "restore": ("restore", "Rebuild the export (or a subtree) as it was at TIME into a local directory."),
    "retire": ("retire", "Retire an old proxy LOG's stream once every shard holds all of it."),
    "status": ("status", "Show each shard's frontier, records and lag, and the consistent point."),
    "up": ("up", "Run the whole stack on this machine until Ctrl-C."),
    "verify": ("verify", "Compare the journal at the consistent point with the live NAS; exit 1 on "
                         "any difference."),
    "config": ("config", "Configuration files."),
}


class LazyCommands(Mapping):
    """The group's commands by name: every name known up front, each command
    built (its module imported) the first time it is looked up."""

    def __init__(self, build: Callable[[str], _click.Command]) -> None:
        self._build = build
        self._built: dict[str, _click.Command] = {}

    def __getitem__(self, name: str) -> _click.Command:
        if name not in COMMANDS:
            raise KeyError(name)
        if name not in self._built:
            self._built[name] = self._build(name)
        return self._built[name]

    def __setitem__(self, name: str, command: _click.Command) -> None:
        self._built[name] = command

    def __iter__(self) -> Iterator[str]:
        return iter(COMMANDS)

    def __len__(self) -> int:
        return len(COMMANDS)


class LazyGroup(TyperGroup):
    """A TyperGroup over ``COMMANDS`` that builds only the commands it is asked for."""

    def __init__(self, **attrs) -> None:
        super().__init__(**attrs)
        self.commands = LazyCommands(self._load)

    def _load(self, name: str) -> _click.Command:
        import typer.main

        from . import app

        # The import statement's path, not importlib's: `python -X importtime` reports only that one.
        __import__(f"{__package__}.{COMMANDS[name][0]}")
        settings = {"pretty_exceptions_short": app.pretty_exceptions_short,
                    "rich_markup_mode": app.rich_markup_mode}
        for info in app.registered_commands:
            if typer.main.get_command_name(info.name or info.callback.__name__) == name:
                return typer.main.get_command_from_info(info, **settings)
        for info in app.registered_groups:
            if info.name == name:
                return typer.main.get_group_from_info(info, suggest_commands=app.suggest_commands,
                                                      **settings)
        raise LookupError(f"nfsproxy.cli.{COMMANDS[name][0]} registers no command {name!r}")

    def list_commands(self, ctx: _click.Context) -> list[str]:
        return list(COMMANDS)

    def format_commands(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        # The summaries, not the commands: listing them loads none.
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [(name, _click.utils.make_default_short_help(summary, limit))
                for name, (_, summary) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def short_help(name: str) -> str:
    """A command's summary as --help shows it untruncated (for the test that
    keeps the catalog true to the commands' docstrings)."""
    return _click.utils.make_default_short_help(COMMANDS[name][1], 10_000)

