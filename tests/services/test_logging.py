"""Logging as a service or worker process sets it up (`configure_logging`), in a child process
of its own, and the request ids a client may give."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from services.observability import accepted_request_id

SCRIPT = """
import logging
from services.observability import configure_logging, request_id_bound
from services.settings import AlignSettings

settings = AlignSettings(_env_file=None)
configure_logging(settings.log_level, settings.log_format)
log = logging.getLogger("alignd.test")
log.debug("not shown at INFO")
with request_id_bound("req-123"):
    log.info("scored %d items", 4, extra={"job_id": "ftjob-1", "items": 4})
log.warning("outside any request")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("it broke")
"""


def _run(log_format: str | None) -> list[str]:
    env = {"ALIGND_LOG_FORMAT": log_format} if log_format else {}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", **env}, timeout=60, check=True)
    return done.stderr.splitlines()


def test_json_logs_are_one_object_a_line_with_the_request_id_and_extras() -> None:
    lines = _run("json")
    records = [json.loads(line) for line in lines]
    assert [r["message"] for r in records] == ["scored 4 items", "outside any request",
                                               "it broke"]
    scored = records[0]
    assert scored["request_id"] == "req-123" and scored["level"] == "INFO"
    assert scored["logger"] == "alignd.test" and scored["time"].endswith("+00:00")
    assert scored["job_id"] == "ftjob-1" and scored["items"] == 4
    assert records[1]["request_id"] == "-"
    assert "ZeroDivisionError" in records[2]["exc_info"]


def test_text_logs_by_default_name_the_request() -> None:
    lines = _run(None)
    assert "INFO" in lines[0] and "alignd.test [req-123] scored 4 items" in lines[0]
    assert "[-] outside any request" in lines[1]
    assert not lines[0].startswith("{")


@pytest.mark.parametrize(("given", "kept"), [
    ("0b8e2c4d-6f1a-4e2b-9c3d-1a2b3c4d5e6f", True),
    ("trace:abc/def+g=", True),
    ("x" * 128, True),
    ("x" * 129, False),
    ("", False),
    ("a b", False),
    ("a\nb", False),
    ("é", False),
    ("-abc", False),
])
def test_a_client_s_request_id_is_kept_only_when_short_and_plain(given: str, kept: bool) -> None:
    assert (accepted_request_id(given) == given) is kept
