"""FRONTDESK_LOG_FORMAT: `text` (the default) or `json`, one object a line for log shippers."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from frontdesk import cli
from frontdesk.cli_errors import UsageError
from frontdesk.log_format import JsonFormatter, formatter
from frontdesk.settings import Settings

SID = "CA" + "1" * 32


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("telephony.voice")
    made = logger.makeRecord(logger.name, logging.INFO, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_a_json_line_carries_the_call_and_the_business() -> None:
    line = JsonFormatter().format(
        record("call %s answered", SID, call_sid=SID, business_id="biz_1", password="hunter2")
    )
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "INFO" and entry["logger"] == "telephony.voice"
    assert entry["message"] == f"call {SID} answered"
    assert (entry["call_sid"], entry["business_id"]) == (SID, "biz_1")
    assert entry["time"].endswith("+00:00")
    assert "hunter2" not in line  # only the named context fields are copied from `extra`


def test_a_line_without_context_has_none_and_an_exception_stays_on_one_line() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        logger = logging.getLogger("x")
        failing = logger.makeRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(failing)
    assert "\n" not in line
    entry = json.loads(line)
    assert "call_sid" not in entry and "business_id" not in entry
    assert "ValueError: bad\nthing" in entry["exception"]


def test_the_text_format_is_the_default_and_unchanged() -> None:
    assert Settings().log_format == "text"
    line = formatter("text").format(record("hello"))
    assert line.endswith("INFO telephony.voice: hello") and line[:4].isdigit()
    with pytest.raises(ValueError, match="not a log format"):
        formatter("xml")
    with pytest.raises(ValueError):
        Settings(log_format="xml")


def test_serving_with_the_json_format_logs_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    try:
        cli.configure_logging("INFO", verbose=False, serving=True, log_format="json")
        logging.getLogger("frontdesk.test").info(
            "call %s ended", SID, extra={"call_sid": SID, "business_id": "biz_2"}
        )
        err = capsys.readouterr().err.strip().splitlines()
    finally:
        for handler in [h for h in root.handlers if h not in before[0]]:
            root.removeHandler(handler)
        root.setLevel(before[1])
    entry = json.loads(err[-1])
    assert entry["message"] == f"call {SID} ended" and entry["business_id"] == "biz_2"


def test_a_bad_log_level_is_still_a_usage_error() -> None:
    with pytest.raises(UsageError):
        cli.configure_logging("LOUD", verbose=False, serving=True, log_format="json")
