"""A LoRA adapter merged into its base model's weights, for download: where the merged folder
lives and the state of its export, shared by the api (which asks for it) and the worker (which
writes it, `trainer.export`).

The merged folder is ``<adapter folder>/merged``: one ordinary Hugging Face folder, written by
the worker under a scratch name and renamed into place, so it exists only when whole (and is
removed with the adapter). Its export's state is kept in the adapter's registry row
(``metadata["merged_export"]``), changed only under the row's lock:

    (none) → queued → running → succeeded
                              ↘ failed   (reported once by the api, then cleared: retried)

The folder, not the state, says whether the merged model exists: a state that says succeeded
over a missing folder is exported again.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.db.models import RegisteredModel

MERGED_DIR = "merged"
"""The merged model's folder, inside the adapter's."""
STATE_KEY = "merged_export"
ADAPTER_KIND = "lora_adapter"
STALE_AFTER = timedelta(hours=1)
"""A queued or running export older than this is taken to be lost (its message, its worker)
and is sent again; a duplicate is harmless, the worker finds the folder written."""


class ExportStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def merged_folder(model: RegisteredModel) -> Path:
    return Path(model.path) / MERGED_DIR


def partial_folder(target: Path, tag: str) -> Path:
    """Where one export writes before its rename: beside the target, never read by anyone."""
    return target.with_name(f"{target.name}.tmp-{tag}")


def locked_model(session: Session, model_id: str) -> RegisteredModel | None:
    """The row, locked until the session's transaction ends: one export state change at a time."""
    return session.scalar(
        select(RegisteredModel).where(RegisteredModel.id == model_id).with_for_update()
        .execution_options(populate_existing=True))  # as it is now, not as first read


def export_state(model: RegisteredModel) -> dict[str, Any] | None:
    """``{"status", "updated_at" (ISO 8601), "error"}``, or None when none was asked for."""
    state = (model.metadata_ or {}).get(STATE_KEY)
    return state if isinstance(state, dict) else None


def set_export_state(model: RegisteredModel, status: ExportStatus | None,
                     error: str | None = None) -> None:
    """Record ``status`` (None: forget the export) on the row; the caller commits."""
    metadata = {k: v for k, v in (model.metadata_ or {}).items() if k != STATE_KEY}
    if status is not None:
        metadata[STATE_KEY] = {"status": status.value, "error": error,
                               "updated_at": datetime.now(UTC).isoformat()}
    model.metadata_ = metadata  # a new dict: the JSONB column sees the change


def is_stale(state: dict[str, Any], now: datetime | None = None) -> bool:
    try:
        updated = datetime.fromisoformat(state["updated_at"])
    except (KeyError, TypeError, ValueError):
        return True
    return (now or datetime.now(UTC)) - updated > STALE_AFTER
