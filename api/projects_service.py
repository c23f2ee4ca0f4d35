"""Projects and their API keys, managed with the admin key; keys authenticate every call."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.db.models import DEFAULT_KEY_SCOPES, KEY_SCOPES, ApiKey, Project
from services.errors import Conflict, NotFound
from services.ids import new_id
from services.invalidation import notify_revoked_key
from services.security import generate_key, hash_key


class ProjectService:
    def __init__(self, session: Session):
        self.session = session

    def create_project(self, name: str) -> Project:
        project = Project(id=new_id("proj"), name=name)
        self.session.add(project)
        try:
            self.session.commit()
        except IntegrityError:
            self.session.rollback()
            raise Conflict(f"a project named {name!r} already exists", param="name") from None
        return project

    def list_projects(self) -> list[Project]:
        return list(self.session.scalars(select(Project).order_by(Project.created_at)))

    def get_project(self, project_id: str) -> Project:
        project = self.session.get(Project, project_id)
        if project is None:
            raise NotFound(f"project {project_id!r} does not exist", param="project_id")
        return project

    def create_key(self, project_id: str, name: str,
                   scopes: Sequence[str] = DEFAULT_KEY_SCOPES) -> tuple[ApiKey, str]:
        self.get_project(project_id)
        secret = generate_key()
        key = ApiKey(id=new_id("key"), project_id=project_id, name=name,
                     key_hash=hash_key(secret), prefix=secret[:14],
                     scopes=[scope for scope in KEY_SCOPES if scope in scopes])
        self.session.add(key)
        self.session.commit()
        return key, secret

    def revoke_key(self, project_id: str, key_id: str) -> None:
        key = self.session.get(ApiKey, key_id)
        if key is None or key.project_id != project_id:
            raise NotFound(f"api key {key_id!r} does not exist", param="key_id")
        key.revoked_at = datetime.now(UTC)
        notify_revoked_key(self.session, key_id)  # every replica drops it as this commits
        self.session.commit()
