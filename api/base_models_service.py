"""Base models the operator declares, from `ALIGND_BASE_MODELS` at start-up or through
/v1/admin/models at any time: each checkpoint is inspected first (`services.checkpoints`), and
one alignd could not load is refused with its reasons, leaving no registry row and no files.

A model named by hub id is fetched once (`services.hub`) into the artifact store's
`base_models/` folder, which every service reads; a local folder is used where it is."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services import registry
from services.artifacts import LocalArtifactStore
from services.checkpoints import Checkpoint, inspect_checkpoint
from services.db.models import RegisteredModel
from services.errors import AlignError, Conflict, InvalidRequest
from services.hub import copy_snapshot, fetch_snapshot, folder_name, is_hub_id

log = logging.getLogger(__name__)

HUB_FOLDER = "base_models"
"""The artifact store's folder of models fetched from the hub, one folder a repository."""


@dataclass(frozen=True)
class ModelSource:
    """Where a base model's checkpoint comes from: a folder here, or a hub repository."""

    path: str | None = None
    hub_id: str | None = None

    @classmethod
    def parse(cls, value: str) -> ModelSource:
        """An `ALIGND_BASE_MODELS` value: `org/name` with no such folder here is a hub id;
        anything else a folder (made absolute, as every service must read the same one)."""
        if is_hub_id(value):
            return cls(hub_id=value)
        return cls(path=str(Path(value).expanduser().absolute()))

    @property
    def param(self) -> str:
        return "hub_id" if self.hub_id is not None else "path"

    def metadata(self) -> dict[str, str]:
        return {"hub_id": self.hub_id} if self.hub_id is not None else {"path": str(self.path)}


@dataclass
class _Folder:
    """The checkpoint's folder while it is checked: ``fresh`` when it is a new copy in the
    store's tmp/ (published into `base_models/` only once it passed, removed otherwise)."""

    path: Path
    fresh: bool = False


class BaseModelService:
    def __init__(self, session: Session, store: LocalArtifactStore, allow_remote_code: bool):
        self.session, self.store = session, store
        self.allow_remote_code = allow_remote_code

    def list(self) -> list[RegisteredModel]:
        return registry.base_models(self.session)

    def declare(self, model_id: str, source: ModelSource,
                trust_remote_code: bool = False) -> RegisteredModel:
        """A new base model (409 when the id is taken)."""
        if self.session.get(RegisteredModel, model_id) is not None:
            raise Conflict(f"model id {model_id!r} is taken; remove that model first to "
                           "declare another under its id", param="id", code="model_id_taken")
        return self._store(model_id, source, trust_remote_code)

    def redeclare(self, model_id: str, source: ModelSource) -> RegisteredModel:
        """The operator's configuration: a base model declared again (its path and checkpoint
        facts updated); custom code as `ALIGND_ALLOW_REMOTE_CODE` says."""
        return self._store(model_id, source, self.allow_remote_code)

    def remove(self, model_id: str) -> RegisteredModel:
        """Out of the registry (409 while something still needs it); its files with it when
        they were fetched from the hub and no other base model uses them."""
        row = registry.delete_base_model(self.session, model_id)
        self.session.commit()
        folder = Path(row.path)
        shared = self.session.scalar(
            select(RegisteredModel.id).where(RegisteredModel.path == row.path).limit(1))
        if shared is None and folder.parent == self.store.root / HUB_FOLDER:
            self.store.remove_tree(folder)
        return row

    def _store(self, model_id: str, source: ModelSource,
               trust_remote_code: bool) -> RegisteredModel:
        folder = self._folder(source)
        try:
            checkpoint = inspect_checkpoint(folder.path)
            self._refuse_unloadable(model_id, source, checkpoint, trust_remote_code)
            if folder.fresh:
                self._publish(folder, str(source.hub_id))
            metadata: dict[str, Any] = {
                "source": source.metadata(), "checkpoint": checkpoint.summary(),
                "trust_remote_code": bool(checkpoint.custom_code) and trust_remote_code}
            row = registry.declare_base_model(self.session, model_id, str(folder.path),
                                              metadata)
            if row is None:
                raise Conflict(f"model id {model_id!r} is a project's model; declare the base "
                               "model under another id", param="id", code="model_id_taken")
            self.session.commit()
        except IntegrityError as exc:  # declared under the same id meanwhile
            self._discard(folder)
            raise Conflict(f"model id {model_id!r} is taken", param="id",
                           code="model_id_taken") from exc
        except BaseException:
            self._discard(folder)
            raise
        return row

    def _folder(self, source: ModelSource) -> _Folder:
        if source.hub_id is None:
            path = Path(str(source.path))
            if not path.is_absolute():
                raise InvalidRequest(f"path must be absolute (a folder the api, the workers "
                                     f"and inference all read), got {source.path!r}",
                                     param="path")
            return _Folder(path)
        kept = self.store.root / HUB_FOLDER / folder_name(source.hub_id)
        if kept.is_dir():  # fetched once, for good
            return _Folder(kept)
        snapshot = fetch_snapshot(source.hub_id)
        staging = Path(tempfile.mkdtemp(prefix="hub-", dir=self.store.root / "tmp"))
        try:
            copy_snapshot(snapshot, staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return _Folder(staging, fresh=True)

    def _publish(self, folder: _Folder, hub_id: str) -> None:
        """The checked copy into `base_models/`; another replica's copy, when it got there
        first, is used instead."""
        target = self.store.directory(HUB_FOLDER) / folder_name(hub_id)
        try:
            os.rename(folder.path, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(folder.path, ignore_errors=True)
            folder.fresh = False
        folder.path = target

    def _discard(self, folder: _Folder) -> None:
        self.session.rollback()
        if folder.fresh:
            shutil.rmtree(folder.path, ignore_errors=True)

    def _refuse_unloadable(self, model_id: str, source: ModelSource, checkpoint: Checkpoint,
                           trust_remote_code: bool) -> None:
        where = source.hub_id or source.path
        if checkpoint.problems:
            raise InvalidRequest(f"base model {model_id!r} cannot be declared from {where}: "
                                 + "; ".join(checkpoint.problems),
                                 param=source.param, code="invalid_checkpoint")
        if not checkpoint.custom_code:
            return
        ships = (f"base model {model_id!r} ({where}) ships code of its own that loading it "
                 f"would run ({', '.join(checkpoint.custom_code)})")
        if not self.allow_remote_code:
            raise InvalidRequest(f"{ships}; this server does not run a checkpoint's code "
                                 "(ALIGND_ALLOW_REMOTE_CODE is false)",
                                 param="trust_remote_code", code="remote_code_not_allowed")
        if not trust_remote_code:
            raise InvalidRequest(f"{ships}; send \"trust_remote_code\": true to accept that",
                                 param="trust_remote_code", code="remote_code_not_trusted")


def declare_configured(sessions: sessionmaker[Session], store: LocalArtifactStore,
                       base_models: dict[str, str], allow_remote_code: bool) -> dict[str, str]:
    """`ALIGND_BASE_MODELS` at start-up: each declared (again) after its checkpoint passed;
    one that fails is logged with its reasons and skipped, and the api serves the others.
    Returns the refused ones, id → why."""
    refused: dict[str, str] = {}
    for model_id, value in base_models.items():
        session = sessions()
        try:
            row = BaseModelService(session, store, allow_remote_code).redeclare(
                model_id, ModelSource.parse(value))
            log.info("base model %r declared from %s", model_id, row.path)
        except AlignError as exc:
            refused[model_id] = exc.message
            log.error("ALIGND_BASE_MODELS: base model %r is not declared (the api serves the "
                      "others): %s", model_id, exc.message)
        finally:
            session.close()
    return refused
