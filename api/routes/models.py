"""/v1/models: the registry — declared base models and every model a job produced."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter

from api.deps import ProjectId, SessionDep, StateDep
from api.presenters import model_object
from api.protocol import Deleted, ListObject, ModelObject
from services import registry
from services.web import ERROR_RESPONSES

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERROR_RESPONSES)


@router.get("", response_model=ListObject[ModelObject])
def list_models(session: SessionDep, project_id: ProjectId) -> ListObject[ModelObject]:
    rows = registry.visible_models(session, project_id)
    parents = {m.id: m.base_model for m in rows}  # a model's lineage is visible with it
    return ListObject[ModelObject](
        data=[model_object(m, registry.root_of(m.id, parents.get)) for m in rows])


@router.get("/{model_id:path}", response_model=ModelObject)
def retrieve_model(model_id: str, session: SessionDep, project_id: ProjectId) -> ModelObject:
    row = registry.get_visible_model(session, project_id, model_id)
    return model_object(row, registry.root_model(session, model_id))


@router.delete("/{model_id:path}", response_model=Deleted)
def delete_model(model_id: str, session: SessionDep, project_id: ProjectId,
                 state: StateDep) -> Deleted:
    """Out of the registry, and its files off the artifact store (409 while a model built on
    it or an unfinished job still needs them)."""
    row = registry.delete_model(session, project_id, model_id)
    session.commit()
    state.store.remove_tree(Path(row.path))
    return Deleted(id=model_id, object="model")
