"""Dependencies: a route's signature reads like a sentence (`files: FilesDep`, `project: ProjectId`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.base_models_service import BaseModelService
from api.files_service import FileService
from api.jobs_service import JobService
from api.model_content import ModelContent
from api.projects_service import ProjectService
from api.reward_check import RewardSpecCheck
from api.state import ApiState
from services.auth import Caller, caller_for_key
from services.errors import NotFound, Unauthorized
from services.security import same_secret

bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")


def get_state(request: Request) -> ApiState:
    return request.app.state.alignd


StateDep = Annotated[ApiState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    session = state.sessions()
    try:
        yield session
    finally:
        session.rollback()  # services commit their own units of work; anything else is dropped
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _secret(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or not credentials.credentials:
        raise Unauthorized("missing API key; send Authorization: Bearer <key>",
                           code="missing_api_key")
    return credentials.credentials


def get_caller(request: Request, credentials: Credentials, session: SessionDep,
               state: StateDep) -> Caller:
    """The calling key: `read` for GET, `train` for every change; within its rate."""
    caller = caller_for_key(session, _secret(credentials))
    caller.require("read" if request.method in ("GET", "HEAD") else "train")
    state.limiter.admit(caller.key_id)
    return caller


def get_project_id(caller: Annotated[Caller, Depends(get_caller)]) -> str:
    return caller.project_id


def require_admin(credentials: Credentials, state: StateDep) -> None:
    if not same_secret(_secret(credentials), state.settings.admin_key.get_secret_value()):
        raise Unauthorized("this endpoint needs the admin key", code="invalid_admin_key")


def require_project_admin(project_id: str, credentials: Credentials, session: SessionDep,
                          state: StateDep) -> None:
    """The operator's admin key, or a key of ``project_id`` itself with the `admin` scope (it
    manages its own project's keys); another project's key learns nothing (404)."""
    secret = _secret(credentials)
    if same_secret(secret, state.settings.admin_key.get_secret_value()):
        return
    caller = caller_for_key(session, secret)
    if caller.project_id != project_id:
        raise NotFound(f"project {project_id!r} does not exist", param="project_id")
    caller.require("admin")
    state.limiter.admit(caller.key_id)


ProjectId = Annotated[str, Depends(get_project_id)]
Admin = Depends(require_admin)
ProjectAdmin = Depends(require_project_admin)


def get_files(session: SessionDep, state: StateDep, project_id: ProjectId) -> FileService:
    return FileService(session, state.store, project_id)


FilesDep = Annotated[FileService, Depends(get_files)]


def get_jobs(session: SessionDep, state: StateDep, project_id: ProjectId,
             files: FilesDep) -> JobService:
    settings = state.settings
    check = RewardSpecCheck(settings.reward_url, settings.admin_key.get_secret_value())
    return JobService(session, project_id, files, state.enqueue, check)


JobsDep = Annotated[JobService, Depends(get_jobs)]


def get_model_content(session: SessionDep, state: StateDep,
                      project_id: ProjectId) -> ModelContent:
    return ModelContent(session, project_id, state.enqueue_export)


ModelContentDep = Annotated[ModelContent, Depends(get_model_content)]


def get_projects(session: SessionDep) -> ProjectService:
    return ProjectService(session)


ProjectsDep = Annotated[ProjectService, Depends(get_projects)]


def get_base_models(session: SessionDep, state: StateDep) -> BaseModelService:
    return BaseModelService(session, state.store, state.settings.allow_remote_code)


BaseModelsDep = Annotated[BaseModelService, Depends(get_base_models)]
