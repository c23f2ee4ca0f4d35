"""A registered model's folder, for download: as the archive to stream, or for a LoRA adapter
asked for merged, the state of the worker's merge until the merged folder exists.

Any model a project sees can be downloaded: its own, and the base models the operator declared
(every project already generates with those). A model of another project does not exist to it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from services.db.models import RegisteredModel
from services.errors import AlignError, Conflict, InvalidRequest
from services.model_archive import (
    Member,
    archive_size,
    folder_members,
    published_adapter,
)
from services.model_exports import (
    ADAPTER_KIND,
    MERGED_DIR,
    ExportStatus,
    export_state,
    is_stale,
    locked_model,
    merged_folder,
    set_export_state,
)
from services.registry import get_visible_model

RETRY_AFTER_S = 2
"""What a 202 tells the client to wait before asking again."""


@dataclass(frozen=True)
class Archive:
    filename: str
    members: list[Member]

    @property
    def size(self) -> int:
        return archive_size(self.members)


@dataclass(frozen=True)
class PendingExport:
    model: str
    status: str
    """queued or running."""


class ExportFailed(AlignError):
    """The worker could not merge the adapter (500): reported once, and retried when asked
    again."""


class ModelContent:
    def __init__(self, session: Session, project_id: str,
                 enqueue_export: Callable[[str], None]) -> None:
        self.session, self.project_id = session, project_id
        self.enqueue_export = enqueue_export

    def get(self, model_id: str, merged: bool = False) -> Archive | PendingExport:
        model = get_visible_model(self.session, self.project_id, model_id)
        folder = _folder(model)
        if merged:
            return self._merged(model)
        # Links are followed only in the operator's folders: a job's folder never has any.
        members = folder_members(folder, skip_dirs=[MERGED_DIR] if _is_adapter(model) else [],
                                 follow_links=model.project_id is None)
        if _is_adapter(model) and model.base_model:
            members = published_adapter(members, model.base_model)
        return Archive(_filename(model_id), members)

    def _merged(self, model: RegisteredModel) -> Archive | PendingExport:
        if not _is_adapter(model):
            raise InvalidRequest(
                f"merged=true applies to lora_adapter models only; model {model.id!r} is a "
                f"{model.kind} model, whose folder is already whole: ask without merged",
                param="merged", code="not_an_adapter")
        row = locked_model(self.session, model.id)  # until the commit: one request at a time
        assert row is not None  # it was just read, and deleting it takes this same lock
        target = merged_folder(row)
        if target.is_dir():
            self.session.rollback()
            return Archive(_filename(row.id, merged=True), folder_members(target))
        state = export_state(row)
        if state is not None and state.get("status") == ExportStatus.FAILED:
            set_export_state(row, None)  # reported once; the next request tries again
            self.session.commit()
            raise ExportFailed(f"merging adapter {row.id!r} into its base model failed on the "
                               f"worker: {state.get('error')}; ask again to retry",
                               param="merged", code="export_failed")
        if (state is None or state.get("status") == ExportStatus.SUCCEEDED  # folder gone
                or is_stale(state)):
            set_export_state(row, ExportStatus.QUEUED)
            self.enqueue_export(row.id)  # before the commit: a failed send leaves no state
            state = export_state(row)
            assert state is not None
        self.session.commit()
        return PendingExport(row.id, state["status"])


def _is_adapter(model: RegisteredModel) -> bool:
    return model.kind == ADAPTER_KIND


def _folder(model: RegisteredModel) -> Path:
    folder = Path(model.path)
    if not folder.is_dir():
        where = ("is declared as " if model.project_id is None else "was stored at ")
        raise Conflict(f"model {model.id!r} {where}{model.path!r}, which is not a folder on "
                       "this server: only models whose files alignd holds can be downloaded",
                       param="model", code="model_not_local")
    return folder


def _filename(model_id: str, merged: bool = False) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("._") or "model"
    return f"{stem}{'-merged' if merged else ''}.tar"
