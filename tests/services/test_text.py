"""Text models write, at the boundaries that cannot hold all of it: PostgreSQL stores a job
event quoting NUL, a lone surrogate and other control characters, escaped; a request's lone
surrogate is read as U+FFFD; an id holding either is a validation error."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.db.models import JobEvent
from services.job_states import record_event
from services.text import Identifier, ModelText, storable, storable_json, well_formed
from tests.services.test_job_states import make_job

MODEL_TEXT = "a\x00b\x01\x1b[0m\x7f\ufffd\ud800c"


def test_storable_escapes_only_what_postgresql_cannot_hold() -> None:
    assert storable(MODEL_TEXT) == "a\\x00b\x01\x1b[0m\x7f\ufffd\\ud800c"
    assert storable("plain \\x00 text, é ✓") == "plain \\x00 text, é ✓"
    assert storable_json({"k\x00": ["\x00", 1, None, {"n": 2.5}], "t": ("\ud800",)}) == \
        {"k\\x00": ["\\x00", 1, None, {"n": 2.5}], "t": ["\\ud800"]}
    assert storable_json(None) is None


def test_well_formed_reads_lone_surrogates_as_u_fffd() -> None:
    assert well_formed(MODEL_TEXT) == "a\x00b\x01\x1b[0m\x7f\ufffd\ufffdc"
    assert well_formed("\ud83d\ude00") == "\ufffd\ufffd"  # two lone halves, not a pair
    text = "\x00 😀"
    assert well_formed(text) is text


def test_an_event_quoting_model_text_is_stored_and_read_back(db_session: Session) -> None:
    job = make_job(db_session)
    record_event(db_session, job.id, f"grader failed: {MODEL_TEXT}", level="error",
                 data={"response": MODEL_TEXT, MODEL_TEXT: [MODEL_TEXT]})
    db_session.flush()  # PostgreSQL refused U+0000 in text and jsonb, and psycopg surrogates
    db_session.expire_all()
    event = db_session.scalars(select(JobEvent).where(JobEvent.job_id == job.id)).one()
    escaped = storable(MODEL_TEXT)
    assert event.message == f"grader failed: {escaped}"
    assert event.data == {"response": escaped, escaped: [escaped]}


class _Request(BaseModel):
    text: ModelText
    id: Identifier


def test_request_text_and_ids() -> None:
    assert _Request(text=MODEL_TEXT, id="rm-1").text == well_formed(MODEL_TEXT)
    for bad in ("rm-\x00", "rm-\ud800"):
        with pytest.raises(ValidationError, match="an id holds no"):
            _Request(text="", id=bad)
