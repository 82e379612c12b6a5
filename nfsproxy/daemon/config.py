"""Configuration files: every `nfsj` option can also come from TOML.

Precedence, highest first: a flag on the command line, an `NFSJ_<COMMAND>_<OPTION>`
environment variable (e.g. `NFSJ_PROXY_LISTEN`), the `--config` file (or
`NFSJ_CONFIG`), the built-in default.

The file has one table per command, keyed by option names as on the command
line (dashes or underscores), plus top-level keys that apply to every
command taking that option (typically `shard`)::

    shard = ["10.0.0.5:7400", "10.0.0.6:7400"]

    [proxy]
    listen = "0.0.0.0:2049"
    backend = "nas.example:/export"
    log = "/var/lib/nfsj/log"
    durability = "sync"
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_config", "default_map", "ConfigError"]


class ConfigError(ValueError):
    """A user-supplied option is wrong; the message says how to fix it."""


def load_config(path: str) -> dict[str, Any]:
    import tomllib  # only when a file is given: `nfsj` without --config parses none

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: {e}") from None


def default_map(config: dict[str, Any], commands: dict[str, set[str]], *, source: str) -> dict[str, dict]:
    """Turn a parsed config into click's default_map, naming the first bad key.

    `commands` maps each command name to the names of its options (underscored).
    """
    out: dict[str, dict] = {name: {} for name in commands}
    for key, value in config.items():
        if isinstance(value, dict):
            if key not in commands:
                raise ConfigError(f"{source}: [{key}] is not a command; known: {', '.join(sorted(commands))}")
            for option, v in value.items():
                name = option.replace("-", "_")
                if name not in commands[key]:
                    raise ConfigError(f"{source}: {key}.{option} is not an option of `nfsj {key}`; "
                                      f"known: {', '.join(sorted(commands[key]))}")
                out[key][name] = v
            continue
        name = key.replace("-", "_")
        users = [command for command, options in commands.items() if name in options]
        if not users:
            raise ConfigError(f"{source}: top-level key {key!r} is not an option of any command")
        for command in users:
            out[command].setdefault(name, value)
    return out
