"""Which registry ids the inference service can serve, and what loading each one takes.

Generation models are `base`, `fine_tuned` and `lora_adapter` rows; `value_model` rows steer
them (VAS) and are tied to the base model whose tokenizer they share. Registry rows are read on
each resolve (a cheap primary-key read) so a model a job just registered is servable at once;
the weights themselves are cached by the engines.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from services.db.engine import session_scope
from services.db.models import RegisteredModel
from services.errors import InvalidRequest, NotFound
from services.registry import visible_models

GENERATION_KINDS = ("base", "fine_tuned", "lora_adapter")
VALUE_MODEL = "value_model"


@dataclass(frozen=True)
class ServedModel:
    id: str
    kind: str
    path: str
    """The weights: a full model folder, or for `lora_adapter` the adapter folder."""
    base_path: str
    """The folder the tokenizer and (for adapters) the base weights load from."""
    base_model: str | None
    created: int
    project_id: str | None
    """The owning project; None for the operator's models, which every project sees."""
    metadata: dict[str, Any]

    @property
    def owned_by(self) -> str:
        return self.project_id or "system"

    @property
    def is_adapter(self) -> bool:
        return self.kind == "lora_adapter"

    @classmethod
    def folder(cls, path: str, kind: str = "base") -> ServedModel:
        """A model folder outside the registry, its path standing for its id."""
        return cls(id=path, kind=kind, path=path, base_path=path, base_model=None, created=0,
                   project_id=None, metadata={})


def _served(row: RegisteredModel, base_path: str) -> ServedModel:
    return ServedModel(id=row.id, kind=row.kind, path=row.path, base_path=base_path,
                       base_model=row.base_model, created=int(row.created_at.timestamp()),
                       project_id=row.project_id, metadata=row.metadata_ or {})


def checked(served: ServedModel | None, model_id: str, project_id: str | None, param: str,
            kinds: tuple[str, ...]) -> ServedModel:
    """``served`` if ``project_id`` may use it (None: any project) as one of ``kinds``;
    NotFound when it is missing or another project's, InvalidRequest for another kind."""
    if served is None or (project_id is not None
                          and served.project_id not in (None, project_id)):
        raise NotFound(f"model {model_id!r} does not exist", param=param, code="model_not_found")
    if served.kind not in kinds:
        raise InvalidRequest(f"model {model_id!r} is a {served.kind}; this field takes "
                             f"{' or '.join(kinds)} models", param=param,
                             code="wrong_model_kind")
    return served


class Catalog(Protocol):
    """What an engine asks of a catalog: a model by id, and its tokenizer."""

    def resolve(self, model_id: str, project_id: str | None, *, param: str = "model",
                kinds: tuple[str, ...] = GENERATION_KINDS) -> ServedModel: ...

    def tokenizer(self, model: ServedModel) -> PreTrainedTokenizerBase: ...

    def invalidated_at(self, model_id: str) -> float:
        """When (monotonic seconds) ``model_id`` was last said to have left the registry;
        -inf if never. A row read before then is stale (`ResolvedModels`)."""
        ...


RESOLVED_FOR_S = 5.0
"""How long a registry row is reused before it is read again, as API keys are
(`services.auth.KeyCache`): a model taken out of the registry stops being served within this."""
RESOLVED_ENTRIES = 4096
"""Past this many remembered rows the memory starts afresh."""


class ResolvedModels:
    """Registry rows as a request path reads them: each model id resolved through the catalog
    once per `RESOLVED_FOR_S`, in a worker thread, and checked against each caller's project and
    the kinds it asks for. Misses are never kept, so a model a job has just registered is
    servable at once. A registry read per request would cost the serving layer three database
    round trips, and an engine a delay for every row of its batch.
    """

    def __init__(self, catalog: Catalog, ttl_s: float = RESOLVED_FOR_S):
        self.catalog, self._ttl_s = catalog, ttl_s
        self._known: dict[tuple[str, tuple[str, ...]], tuple[ServedModel, float]] = {}

    async def resolve(self, model_id: str, project_id: str | None = None, *,
                      param: str = "model",
                      kinds: tuple[str, ...] = GENERATION_KINDS) -> ServedModel:
        """The row as ``project_id`` (None: any project) may use it, NotFound or
        InvalidRequest as `checked` raises them."""
        known = self._known.get((model_id, kinds))
        if (known is None or time.monotonic() - known[1] >= self._ttl_s
                or self.catalog.invalidated_at(model_id) >= known[1]):
            # Read as the caller: another project's row of the wrong kind must be "does not
            # exist" to it, not "is a <kind>" (which would tell it the id and the kind).
            served = await asyncio.to_thread(self.catalog.resolve, model_id, project_id,
                                             param=param, kinds=kinds)
            if len(self._known) >= RESOLVED_ENTRIES:
                self._known.clear()
            known = self._known[(model_id, kinds)] = (served, time.monotonic())
        return checked(known[0], model_id, project_id, param, kinds)


class FolderCatalog:
    """Model folders by path, no registry: for an engine run in process on models the caller
    already has on disk (a worker sampling a job's rollouts from its base model)."""

    def __init__(self) -> None:
        self._tokenizers: dict[str, PreTrainedTokenizerBase] = {}
        self._lock = threading.Lock()

    def invalidated_at(self, model_id: str) -> float:
        return -math.inf  # folders, not registry rows

    def resolve(self, model_id: str, project_id: str | None, *, param: str = "model",
                kinds: tuple[str, ...] = GENERATION_KINDS) -> ServedModel:
        if not (Path(model_id) / "config.json").is_file():
            raise NotFound(f"model folder {model_id!r} has no config.json", param=param,
                           code="model_not_found")
        return ServedModel.folder(model_id, kinds[0])

    def tokenizer(self, model: ServedModel) -> PreTrainedTokenizerBase:
        with self._lock:
            if model.path not in self._tokenizers:
                self._tokenizers[model.path] = AutoTokenizer.from_pretrained(model.path)
            return self._tokenizers[model.path]


class ModelCatalog:
    """Registry lookups scoped to a project, plus each model's tokenizer and context length."""

    def __init__(self, sessions: sessionmaker[Session]):
        self._sessions = sessions
        self._tokenizers: dict[str, PreTrainedTokenizerBase] = {}
        self._lock = threading.Lock()
        self._invalidated: dict[str, float] = {}

    def invalidate(self, model_id: str) -> None:
        """A notification that ``model_id`` left the registry (`services.invalidation`): every
        `ResolvedModels` reads its row again before serving it. From any thread."""
        self._invalidated[model_id] = time.monotonic()

    def invalidated_at(self, model_id: str) -> float:
        return self._invalidated.get(model_id, -math.inf)

    def resolve(self, model_id: str, project_id: str | None, *, param: str = "model",
                kinds: tuple[str, ...] = GENERATION_KINDS) -> ServedModel:
        """The model ``model_id`` as ``project_id`` sees it (None: every project's models)."""
        with session_scope(self._sessions) as session:
            row = session.get(RegisteredModel, model_id)
            served = None
            if row is not None:
                base_path = row.path
                if row.kind in ("lora_adapter", VALUE_MODEL) and row.base_model:
                    base = session.get(RegisteredModel, row.base_model)
                    if base is not None:
                        base_path = base.path
                served = _served(row, base_path)
        return checked(served, model_id, project_id, param, kinds)

    def listed(self, project_id: str | None) -> list[ServedModel]:
        """Generation and value models visible to the project, oldest first."""
        with session_scope(self._sessions) as session:
            rows = (visible_models(session, project_id) if project_id is not None
                    else list(session.query(RegisteredModel).order_by(RegisteredModel.created_at)))
            kinds = (*GENERATION_KINDS, VALUE_MODEL)
            return [_served(row, row.path) for row in rows if row.kind in kinds]

    def tokenizer(self, model: ServedModel) -> PreTrainedTokenizerBase:
        """The model's tokenizer (an adapter's is its base's unless it saved its own)."""
        folder = model.path if (Path(model.path) / "tokenizer_config.json").exists() \
            else model.base_path
        with self._lock:
            if folder not in self._tokenizers:
                self._tokenizers[folder] = AutoTokenizer.from_pretrained(folder)
            return self._tokenizers[folder]

    def eos_token_ids(self, model: ServedModel) -> tuple[int, ...]:
        """Tokens that end a generation: the tokenizer's eos and the generation config's
        (a chat model's end-of-turn token among them)."""
        ids = {self.tokenizer(model).eos_token_id, *_generation_eos_ids(model.base_path)}
        return tuple(sorted(i for i in ids if isinstance(i, int)))

    @staticmethod
    def max_model_len(model: ServedModel) -> int:
        """The context length from the model's config.json (max_position_embeddings)."""
        return _max_position_embeddings(model.base_path)


# Read once per folder and process, as the folder's tokenizer (above) and weights (the
# engines) are: every request needs them.
@lru_cache(maxsize=1024)
def _generation_eos_ids(folder: str) -> tuple[object, ...]:
    config_path = Path(folder) / "generation_config.json"
    if not config_path.exists():
        return ()
    eos = json.loads(config_path.read_text()).get("eos_token_id")
    return tuple(eos) if isinstance(eos, list) else (eos,)


@lru_cache(maxsize=1024)
def _max_position_embeddings(folder: str) -> int:
    config = json.loads((Path(folder) / "config.json").read_text())
    return int(config.get("max_position_embeddings") or 2048)
