"""The daemons' logs on stderr: text or JSON lines (`--log-format`), UTC times.

Apart from the CLI's root so that commands that log nothing load no logging."""

import datetime
import json
import logging
import sys
import time

__all__ = ["log_to_stderr"]


def log_to_stderr(verbose: bool, log_format: str) -> None:
    """Send every logger's records to stderr as ``log_format`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    text = logging.Formatter("%(asctime)sZ %(levelname)s %(name)s: %(message)s")
    text.converter = time.gmtime
    handler.setFormatter(JsonFormatter() if log_format == "json" else text)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, msg (and exc)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(),
                 "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)
