"""Request and response models of the orchestration api (OpenAI's shapes where they exist)."""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field

from services.db.models import DEFAULT_KEY_SCOPES
from services.methods import Method

T = TypeVar("T")


class ListObject(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool = False


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    line_count: int
    sha256: str


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool = True


class JobError(BaseModel):
    code: str | None = None
    message: str
    param: str | None = None


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=500)
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    suffix: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")] | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    method: Method
    hyperparameters: dict[str, Any] | None = None
    """OpenAI's deprecated top-level hyperparameters; only accepted empty (use method)."""
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    integrations: list[Any] | None = None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str
    result_files: list[str] = Field(default_factory=list)
    seed: int
    status: str
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[Any] | None = None
    metadata: dict[str, str] | None = None
    method: dict[str, Any]
    suffix: str | None = None
    user_provided_suffix: str | None = None
    cancel_requested: bool = False
    attempts: int = 0
    total_steps: int | None = None
    """alignd: the optimizer steps of the whole run, as its trainer counted them when it
    started (null before a worker has started it)."""


class JobEventObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    data: dict[str, Any] | None = None
    type: str


class CheckpointObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, float]
    step_number: int


class MetricSeries(BaseModel):
    name: str
    steps: list[int]
    values: list[float]


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    kind: str
    base_model: str | None = None
    """The base model at the root of its lineage (the one its id names); None for a base model."""
    parent: str | None = None
    """The model its job trained from: a base model, or a fine-tuned one; None for a base model."""
    job_id: str | None = None


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.-]+$")


class ProjectObject(BaseModel):
    id: str
    object: Literal["project"] = "project"
    name: str
    created_at: int


Scope = Literal["read", "train", "generate", "score", "admin"]
"""`services.db.models.KEY_SCOPES`, spelled out for the OpenAPI document."""


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="default", min_length=1, max_length=200)
    scopes: list[Scope] = Field(
        default_factory=lambda: cast(list[Scope], list(DEFAULT_KEY_SCOPES)), min_length=1,
        description="What the key may do: read (the api's GET routes), train (files, jobs, "
                    "deleting models), generate (inference), score (the reward service), "
                    "admin (its own project's API keys). Default: all but admin.")


class ApiKeyObject(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    name: str
    project_id: str
    prefix: str
    created_at: int
    scopes: list[str]
    key: str | None = None
    """Only in the response that created it."""
