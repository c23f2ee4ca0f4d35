"""Request and response models of the orchestration api (OpenAI's shapes where they exist)."""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.db.models import DEFAULT_KEY_SCOPES
from services.hub import HUB_ID, HUB_ID_LENGTH
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
    shapes: list[str] | None = None
    """The row shapes found in the file (chat, prompt_completion, openai_rft, ...: see the
    README); null for a file uploaded before alignd recorded them, until a job reads it."""


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


class ModelExport(BaseModel):
    """A LoRA adapter's merge into its base model, while a worker makes it (202)."""

    object: Literal["model.export"] = "model.export"
    model: str
    status: Literal["queued", "running"]
    retry_after: int
    """Seconds to wait before asking again (also the Retry-After header)."""


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


class BaseModelCreate(BaseModel):
    """A base model to declare: a folder on the api's machine (shared with the workers and
    inference), or a Hugging Face hub id fetched once into the artifact store."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
                    description="the model id jobs and generation requests name")
    path: str | None = Field(default=None, min_length=1, max_length=4096,
                             description="an absolute path to the checkpoint's folder")
    hub_id: str | None = Field(default=None, max_length=HUB_ID_LENGTH,
                               json_schema_extra={"pattern": HUB_ID.pattern},
                               description="a hub repository, org/name")
    trust_remote_code: bool = Field(default=False, description=(
        "accept a checkpoint that ships its own Python (auto_map in config.json), where the "
        "server allows it (ALIGND_ALLOW_REMOTE_CODE)"))

    @field_validator("hub_id")
    @classmethod
    def _hub_id(cls, hub_id: str | None) -> str | None:
        if hub_id is not None and not HUB_ID.match(hub_id):
            raise ValueError("a Hugging Face hub id is org/name (letters, digits, '.', '_' "
                             "and '-', with no '--' or '..' and no '.' or '-' at an end)")
        return hub_id

    @model_validator(mode="after")
    def _one_source(self) -> BaseModelCreate:
        if (self.path is None) == (self.hub_id is None):
            raise ValueError("give exactly one of path (a folder) and hub_id (a Hugging Face "
                             "hub repository)")
        return self


class CheckpointFacts(BaseModel):
    """What the checkpoint's files said when it was declared."""

    architectures: list[str]
    model_type: str | None
    context_length: int | None
    chat_template: bool | None
    eos_token: str | None
    eos_token_ids: list[int]
    pad_token: str | None
    dtype: str | None
    custom_code: list[str]
    weights: str | None


class BaseModelObject(ModelObject):
    path: str
    """Where the services load it from."""
    hub_id: str | None = None
    """The hub repository it was fetched from."""
    trust_remote_code: bool = False
    checkpoint: CheckpointFacts | None = None
    """None for a model declared before checkpoints were checked."""
