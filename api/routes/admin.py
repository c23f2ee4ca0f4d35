"""/v1/admin: projects and base models, behind the admin key from settings; a project's API
keys, also open to that project's own keys with the `admin` scope."""

from __future__ import annotations

from fastapi import APIRouter, status

from api.base_models_service import ModelSource
from api.deps import Admin, BaseModelsDep, ProjectAdmin, ProjectsDep
from api.presenters import base_model_object, key_object, project_object
from api.protocol import (
    ApiKeyCreate,
    ApiKeyObject,
    BaseModelCreate,
    BaseModelObject,
    Deleted,
    ListObject,
    ProjectCreate,
    ProjectObject,
)
from services.web import ERROR_RESPONSES

router = APIRouter(prefix="/v1/admin", tags=["admin"], responses=ERROR_RESPONSES)


@router.post("/projects", response_model=ProjectObject, status_code=status.HTTP_201_CREATED,
             dependencies=[Admin])
def create_project(body: ProjectCreate, projects: ProjectsDep) -> ProjectObject:
    return project_object(projects.create_project(body.name))


@router.get("/projects", response_model=ListObject[ProjectObject], dependencies=[Admin])
def list_projects(projects: ProjectsDep) -> ListObject[ProjectObject]:
    return ListObject[ProjectObject](data=[project_object(p) for p in projects.list_projects()])


@router.post("/projects/{project_id}/api_keys", response_model=ApiKeyObject,
             status_code=status.HTTP_201_CREATED, dependencies=[ProjectAdmin])
def create_api_key(project_id: str, body: ApiKeyCreate, projects: ProjectsDep) -> ApiKeyObject:
    key, secret = projects.create_key(project_id, body.name, body.scopes)
    return key_object(key, secret)


@router.delete("/projects/{project_id}/api_keys/{key_id}", response_model=Deleted,
               dependencies=[ProjectAdmin])
def revoke_api_key(project_id: str, key_id: str, projects: ProjectsDep) -> Deleted:
    projects.revoke_key(project_id, key_id)
    return Deleted(id=key_id, object="api_key")


@router.post("/models", response_model=BaseModelObject, status_code=status.HTTP_201_CREATED,
             dependencies=[Admin])
def declare_base_model(body: BaseModelCreate, base_models: BaseModelsDep) -> BaseModelObject:
    """Declare a base model every project can train and generate from, at once (no restart).
    Its checkpoint is checked first: a folder alignd could not load is a 400 saying why, and
    leaves nothing behind. A hub id is fetched once into the artifact store."""
    source = ModelSource(path=body.path, hub_id=body.hub_id)
    return base_model_object(base_models.declare(body.id, source, body.trust_remote_code))


@router.get("/models", response_model=ListObject[BaseModelObject], dependencies=[Admin])
def list_base_models(base_models: BaseModelsDep) -> ListObject[BaseModelObject]:
    return ListObject[BaseModelObject](data=[base_model_object(m) for m in base_models.list()])


@router.delete("/models/{model_id:path}", response_model=Deleted, dependencies=[Admin])
def remove_base_model(model_id: str, base_models: BaseModelsDep) -> Deleted:
    """Out of the registry (409 while a model built on it or an unfinished job needs it)."""
    base_models.remove(model_id)
    return Deleted(id=model_id, object="model")
