"""/v1/admin: projects, behind the admin key from settings; a project's API keys, also open to
that project's own keys with the `admin` scope."""

from __future__ import annotations

from fastapi import APIRouter, status

from api.deps import Admin, ProjectAdmin, ProjectsDep
from api.presenters import key_object, project_object
from api.protocol import (
    ApiKeyCreate,
    ApiKeyObject,
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
