"""Log lines as one JSON object each (`FRONTDESK_LOG_FORMAT=json`), for log shippers.

Each line carries `time` (UTC, ISO 8601), `level`, `logger` and `message`, the `call_sid` and
`business_id` when the record was logged with them as `extra`, and `exception` (the formatted
traceback) when there is one. Nothing else from the record is copied: a secret can only reach
the line through the message, exactly as with the text format.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

CONTEXT_FIELDS = ("call_sid", "business_id")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def formatter(name: str) -> logging.Formatter:
    """The formatter `FRONTDESK_LOG_FORMAT` names: `text` (UTC time, level, logger: message)
    or `json`. ValueError for any other name."""
    if name == "json":
        return JsonFormatter()
    if name == "text":
        text = logging.Formatter(TEXT_FORMAT, datefmt="%Y-%m-%dT%H:%M:%SZ")
        text.converter = time.gmtime
        return text
    raise ValueError(f"{name!r} is not a log format (use one of {', '.join(FORMATS)})")
