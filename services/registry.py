"""The model registry: base models the operator declares (visible to every project) and every
model a job produced (visible to its project). Inference and reward_service load by these ids."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Text, cast, or_, select
from sqlalchemy.orm import Session

from services.db.models import Job, RegisteredModel
from services.errors import Conflict, Forbidden, NotFound
from services.job_states import TERMINAL

BASE = "base"


def fine_tuned_id(root: str, suffix: str | None, job_id: str) -> str:
    """`ft:<root base model>:<suffix>:<job>`, OpenAI's form: a model trained from a fine-tuned
    one names the base model at the root of its lineage, not its parent's id (the parent is
    the row's `base_model`), so ids stay flat however deep the lineage; the job id makes it
    unique. The suffix part is empty when none was given."""
    return f"ft:{root}:{suffix or ''}:{job_id}"


def root_of(model_id: str, parent_of: Callable[[str], str | None]) -> str:
    """The base model at the root of ``model_id``'s lineage: ``parent_of`` (a model's id → the
    model it was trained from, None for a base model or one no longer known) followed up."""
    seen = {model_id}
    while (parent := parent_of(model_id)) and parent not in seen:
        seen.add(parent)
        model_id = parent
    return model_id


def root_model(session: Session, model_id: str) -> str:
    """`root_of` over the registry's rows."""

    def parent_of(key: str) -> str | None:
        row = session.get(RegisteredModel, key)
        return None if row is None else row.base_model

    return root_of(model_id, parent_of)


def visible_models(session: Session, project_id: str) -> list[RegisteredModel]:
    query = (
        select(RegisteredModel)
        .where(or_(RegisteredModel.project_id.is_(None), RegisteredModel.project_id == project_id))
        .order_by(RegisteredModel.created_at, RegisteredModel.id)
    )
    return list(session.scalars(query))


def get_visible_model(session: Session, project_id: str, model_id: str,
                      param: str = "model") -> RegisteredModel:
    model = session.get(RegisteredModel, model_id)
    if model is None or model.project_id not in (None, project_id):
        raise NotFound(f"model {model_id!r} does not exist", param=param, code="model_not_found")
    return model


def delete_model(session: Session, project_id: str, model_id: str) -> RegisteredModel:
    """Take the project's model out of the registry (the caller commits and then removes its
    files); Conflict while a model built on it or an unfinished job still needs it."""
    model = get_visible_model(session, project_id, model_id)
    if model.project_id is None:
        raise Forbidden(f"model {model_id!r} is a base model declared by the operator; "
                        "it cannot be deleted through the api", param="model")
    user = model_user(session, model_id)
    if user is not None:
        raise Conflict(f"model {model_id!r} cannot be deleted while {user}", param="model",
                       code="model_in_use")
    session.delete(model)
    return model


def model_user(session: Session, model_id: str) -> str | None:
    """What still needs the model's files, if anything: a registered model built on it (a
    LoRA adapter, a value model) or an unfinished job that names it (its base model, or any
    model its method names)."""
    dependent = session.scalar(
        select(RegisteredModel.id).where(RegisteredModel.base_model == model_id).limit(1))
    if dependent is not None:
        return f"model {dependent!r} is built on it"
    job = session.scalar(
        select(Job.id).where(
            Job.status.not_in([status.value for status in TERMINAL]),
            or_(Job.model == model_id,
                cast(Job.method, Text).contains(f'"{model_id}"', autoescape=True)),
        ).limit(1))
    return None if job is None else f"job {job} uses it"


def declare_base_models(session: Session, base_models: dict[str, str]) -> None:
    """Upsert the operator's base models (id → local path or hub id), unchecked: the api
    checks a checkpoint first (`api.base_models_service`)."""
    for model_id, path in base_models.items():
        declare_base_model(session, model_id, path)


def declare_base_model(session: Session, model_id: str, path: str,
                       metadata: dict[str, Any] | None = None) -> RegisteredModel | None:
    """Upsert one base model; None (nothing written) when a project's model has the id."""
    existing = session.get(RegisteredModel, model_id)
    if existing is None:
        existing = RegisteredModel(id=model_id, project_id=None, kind=BASE, path=path,
                                   metadata_=metadata)
        session.add(existing)
    elif existing.project_id is None:
        existing.path = path
        if metadata is not None:
            existing.metadata_ = metadata
    else:
        return None
    return existing


def base_models(session: Session) -> list[RegisteredModel]:
    """The operator's base models, oldest first."""
    query = (select(RegisteredModel).where(RegisteredModel.project_id.is_(None),
                                           RegisteredModel.kind == BASE)
             .order_by(RegisteredModel.created_at, RegisteredModel.id))
    return list(session.scalars(query))


def delete_base_model(session: Session, model_id: str) -> RegisteredModel:
    """Take a base model out of the registry (the caller commits, then removes any files of
    its in the artifact store); Conflict while a model built on it or an unfinished job still
    needs it."""
    model = session.get(RegisteredModel, model_id)
    if model is None or model.project_id is not None or model.kind != BASE:
        raise NotFound(f"base model {model_id!r} does not exist", param="model",
                       code="model_not_found")
    user = model_user(session, model_id)
    if user is not None:
        raise Conflict(f"base model {model_id!r} cannot be removed while {user}",
                       param="model", code="model_in_use")
    session.delete(model)
    return model


def register_model(session: Session, *, model_id: str, project_id: str, kind: str, path: str,
                   base_model: str, job_id: str, metadata: dict[str, Any] | None = None) -> None:
    """Idempotent: a job re-run after a crash registers the same id once. A row of another
    project (or the operator's) under the id is never overwritten."""
    existing = session.get(RegisteredModel, model_id)
    if existing is not None:
        if existing.project_id != project_id:
            raise Conflict(f"model id {model_id!r} is taken", param="model",
                           code="model_id_taken")
        existing.path, existing.kind = path, kind
        return
    session.add(RegisteredModel(id=model_id, project_id=project_id, kind=kind, path=path,
                                base_model=base_model, job_id=job_id, metadata_=metadata))


def resolve_base_path(session: Session, model_id: str) -> tuple[str, RegisteredModel]:
    """The path from_pretrained loads for a model, and its row. A LoRA adapter resolves to its
    base model's path (the adapter is applied on top by the caller)."""
    model = session.get(RegisteredModel, model_id)
    if model is None:
        raise NotFound(f"model {model_id!r} does not exist", param="model")
    if model.kind == "lora_adapter" and model.base_model:
        base_path, _ = resolve_base_path(session, model.base_model)
        return base_path, model
    return model.path, model
