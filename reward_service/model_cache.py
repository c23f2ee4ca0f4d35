"""Reward models loaded from the registry, kept resident in an LRU bounded by parameter bytes.

A `reward_model` row's path is a `save_pretrained` folder of an
`AutoModelForSequenceClassification` (num_labels = number of objectives, their names in the
row's metadata `objectives`), or, when it holds `alignd_reward.json` (`trainer.reward_head`), of
a causal LM read as an implicit reward β·(Σ log π(y|x) − Σ log π_ref(y|x)) over the response's
tokens; its reference, if any, is loaded into this cache like any model (key
``reference:<path>``). A `reward_ensemble` row's path holds `ensemble.json`
(`{"members": [...], "objectives": [...]}`) and one such folder per member, `member-<i>/`.

Registry rows are read on a cache miss, and again for a model in memory once `recheck_seconds`
have passed since the last read: a model taken out of the registry stops scoring within that
(and is dropped from memory), as inference's resolved rows do.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from modeling.heads import ImplicitHead, read_head
from modeling.logprobs import response_logps
from modeling.sequences import pad_right, response_labels
from reward_service.batching import FORWARD_THREAD, BatchObserver, MicroBatcher
from reward_service.encoding import EncodedItem
from services.db.engine import session_scope
from services.db.models import RegisteredModel
from services.errors import InvalidRequest, NotFound
from services.registry import resolve_base_path

REWARD_MODEL, REWARD_ENSEMBLE = "reward_model", "reward_ensemble"


@dataclass
class LoadedModel:
    """A model resident in the cache, with the micro-batcher its forward passes go through."""

    key: str
    model: PreTrainedModel = field(repr=False)
    tokenizer: PreTrainedTokenizerBase = field(repr=False)
    objectives: list[str]
    default_weights: dict[str, float]
    max_input_tokens: int
    nbytes: int
    batcher: MicroBatcher[Any] = field(repr=False)

    async def score(self, encoded: list[EncodedItem]) -> list[list[float]]:
        """(N, K) outputs per item, batched with whoever else is waiting."""
        raise NotImplementedError


@dataclass
class LoadedRewardModel(LoadedModel):
    """A sequence classifier: K objectives read at each sequence's last token."""

    async def score(self, encoded: list[EncodedItem]) -> list[list[float]]:
        return await self.batcher.score([e.input_ids for e in encoded])

    def forward(self, sequences: list[list[int]]) -> list[list[float]]:
        """One right-padded pass; a sequence classifier pools each row at its last non-pad token,
        so a row's output does not depend on its neighbours."""
        pad_id = int(self.model.config.pad_token_id)
        longest = max(len(ids) for ids in sequences)
        input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros_like(input_ids)  # (B, T)
        for row, ids in enumerate(sequences):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        device = self.model.device
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids.to(device),
                                attention_mask=attention_mask.to(device)).logits  # (B, K)
        return logits.float().tolist()


@dataclass
class LoadedLogProbModel(LoadedModel):
    """A causal LM whose one output per item is Σ_t log π(y_t | x, y_<t) over the response's
    tokens (`EncodedItem.response_start` on): an implicit reward model, whose reward is
    `head.beta` times that less its reference's, or (head None) such a reference."""

    head: ImplicitHead | None = None

    async def score(self, encoded: list[EncodedItem]) -> list[list[float]]:
        return await self.batcher.score(encoded)

    def forward(self, rows: list[EncodedItem]) -> list[list[float]]:
        """One right-padded pass; causal attention never looks at a row's padding, so a row's
        sum does not depend on its neighbours. Masked as in training (`response_labels`)."""
        pad_id = int(self.model.config.pad_token_id)
        texts = pad_right([row.input_ids for row in rows], pad_id, self.model.device)  # (B, T)
        labels = response_labels(texts, [row.response_start for row in rows])  # (B, T)
        with torch.inference_mode():
            logits = self.model(input_ids=texts.input_ids,
                                attention_mask=texts.attention_mask).logits  # (B, T, V)
            logps = response_logps(logits, labels)  # (B,) in float32
        return [[value] for value in logps.tolist()]


@dataclass(frozen=True)
class Registered:
    id: str
    kind: str
    path: str
    metadata: dict[str, Any]
    owner: str | None
    """The owning project; None for an operator's model every project sees."""


BatcherFactory = Callable[[Callable[[list[Any]], list[list[float]]]], MicroBatcher[Any]]


def objective_names(metadata: dict[str, Any], num_labels: int) -> list[str]:
    names = metadata.get("objectives")
    if isinstance(names, list) and len(names) == num_labels:
        return [str(name) for name in names]
    return ["reward"] if num_labels == 1 else [f"objective_{k}" for k in range(num_labels)]


def default_weights(metadata: dict[str, Any], objectives: list[str]) -> dict[str, float]:
    """metadata `objective_weights` if given, else equal weights 1/K (the mean)."""
    weights = metadata.get("objective_weights")
    if isinstance(weights, dict):
        return {name: float(weights.get(name, 0.0)) for name in objectives}
    return {name: 1.0 / len(objectives) for name in objectives}


def load_reward_model(key: str, path: str, metadata: dict[str, Any], max_input_tokens: int,
                      make_batcher: BatcherFactory) -> LoadedModel:
    """The reward model in `path`: an implicit one if it says so (`alignd_reward.json`), else a
    sequence classifier."""
    head = read_head(Path(path))
    if head is not None:
        return load_log_prob_model(key, path, head, max_input_tokens, make_batcher)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = _prepared(key, AutoModelForSequenceClassification.from_pretrained(path), tokenizer)
    objectives = objective_names(metadata, int(model.config.num_labels or 1))
    loaded = LoadedRewardModel(
        key=key, model=model, tokenizer=tokenizer, objectives=objectives,
        default_weights=default_weights(metadata, objectives),
        max_input_tokens=_input_limit(model, max_input_tokens), nbytes=_nbytes(model),
        batcher=None)  # type: ignore[arg-type]
    loaded.batcher = make_batcher(loaded.forward)
    return loaded


def load_log_prob_model(key: str, path: str, head: ImplicitHead | None, max_input_tokens: int,
                        make_batcher: BatcherFactory) -> LoadedLogProbModel:
    """The causal LM in `path`: an implicit reward model (`head`) or a reference (None)."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = _prepared(key, AutoModelForCausalLM.from_pretrained(path), tokenizer)
    loaded = LoadedLogProbModel(
        key=key, model=model, tokenizer=tokenizer, objectives=["reward"],
        default_weights={"reward": 1.0}, max_input_tokens=_input_limit(model, max_input_tokens),
        nbytes=_nbytes(model), batcher=None, head=head)  # type: ignore[arg-type]
    loaded.batcher = make_batcher(loaded.forward)
    return loaded


def _prepared(key: str, model: Any, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """In eval mode, on the GPU if there is one, with the pad id that right padding uses."""
    model = model.eval()
    if torch.cuda.is_available():  # the batched forward is where a GPU pays off
        model = model.to("cuda")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise InvalidRequest(f"reward model {key!r} has a tokenizer with neither a pad nor an eos "
                             "token; it cannot be batched")
    model.config.pad_token_id = pad_id
    return model


def _input_limit(model: PreTrainedModel, max_input_tokens: int) -> int:
    positions = getattr(model.config, "max_position_embeddings", None) or max_input_tokens
    return min(max_input_tokens, int(positions))


def _nbytes(model: PreTrainedModel) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def registered_reward_models(sessions: sessionmaker[Session],
                             project_id: str | None) -> list[RegisteredModel]:
    """The reward models and ensembles ``project_id`` may use (None: all), oldest first."""
    query = (select(RegisteredModel)
             .where(RegisteredModel.kind.in_((REWARD_MODEL, REWARD_ENSEMBLE)))
             .order_by(RegisteredModel.created_at, RegisteredModel.id))
    if project_id is not None:
        query = query.where(or_(RegisteredModel.project_id.is_(None),
                                RegisteredModel.project_id == project_id))
    with session_scope(sessions) as session:
        return list(session.scalars(query))


class RewardModelCache:
    """Registry lookups and loaded models; LRU eviction past `capacity_bytes` of parameters."""

    def __init__(self, sessions: sessionmaker[Session], *, capacity_bytes: int,
                 max_input_tokens: int, max_wait_ms: float, max_batch_tokens: int,
                 observe: BatchObserver | None = None, recheck_seconds: float = 5.0,
                 observe_cache: Callable[[bool], None] = lambda hit: None):
        self._sessions = sessions
        self._observe_cache = observe_cache
        """Told of every loaded model used again (True) and every model loaded (False)."""
        self._recheck_seconds = recheck_seconds
        self._capacity = capacity_bytes
        self._max_input_tokens = max_input_tokens
        self._batcher_options = {"max_wait_ms": max_wait_ms, "max_batch_tokens": max_batch_tokens,
                                 "observe": observe}
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._ensembles: dict[str, list[str]] = {}
        self._manifests: dict[str, dict[str, Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._owners: dict[str, str | None] = {}
        """Registry id → owning project, for every model looked up so far."""
        self._read_at: dict[str, float] = {}
        """Registry id → when its row was last read (monotonic seconds)."""

    @property
    def resident_bytes(self) -> int:
        return sum(model.nbytes for model in self._loaded.values())

    def lookup(self, model_id: str, param: str) -> Registered:
        with session_scope(self._sessions) as session:
            try:
                path, row = resolve_base_path(session, model_id)
            except NotFound:
                raise NotFound(f"model {model_id!r} does not exist", param=param,
                               code="model_not_found") from None
            self._owners[row.id] = row.project_id
            self._read_at[row.id] = time.monotonic()
            return Registered(id=row.id, kind=row.kind, path=path, metadata=row.metadata_ or {},
                              owner=row.project_id)

    async def _recheck(self, model_id: str, param: str) -> None:
        """Read a remembered model's row again once `recheck_seconds` have passed; a model no
        longer in the registry is forgotten (its weights dropped) and NotFound."""
        if time.monotonic() - self._read_at.get(model_id, 0.0) < self._recheck_seconds:
            return
        try:
            await asyncio.to_thread(self.lookup, model_id, param)
        except NotFound:
            self._forget(model_id)
            raise

    def invalidate(self, model_id: str) -> None:
        """A notification that ``model_id`` left the registry: its row is read again before
        its next use (and the model forgotten then, NotFound). From any thread."""
        self._read_at.pop(model_id, None)

    def _forget(self, model_id: str) -> None:
        members = self._ensembles.pop(model_id, [])
        for key in [model_id, *(f"{model_id}#member-{i}" for i in range(len(members)))]:
            self._loaded.pop(key, None)  # a request that holds it finishes with it
        self._manifests.pop(model_id, None)
        self._owners.pop(model_id, None)
        self._read_at.pop(model_id, None)

    def _check_visible(self, model_id: str, project_id: str | None, param: str) -> None:
        """A model of another project does not exist, as far as this caller can tell."""
        owner = self._owners.get(model_id)
        if project_id is not None and owner is not None and owner != project_id:
            raise NotFound(f"model {model_id!r} does not exist", param=param,
                           code="model_not_found")

    async def reward_model(self, model_id: str, param: str,
                           project_id: str | None = None) -> LoadedModel:
        """A registered `reward_model` ``project_id`` may use (None: any), loaded on first use."""
        if model_id in self._loaded:
            await self._recheck(model_id, param)
        if model_id in self._loaded:  # again: the awaited re-check lets others evict it
            self._check_visible(model_id, project_id, param)
            return self._touch(model_id)
        async with self._locks.setdefault(model_id, asyncio.Lock()):
            if model_id in self._loaded:
                self._check_visible(model_id, project_id, param)
                return self._touch(model_id)
            row = await asyncio.to_thread(self.lookup, model_id, param)
            self._check_visible(model_id, project_id, param)
            if row.kind != REWARD_MODEL:
                hint = (" (use a reward spec of type 'ensemble' with 'model')"
                        if row.kind == REWARD_ENSEMBLE else "")
                raise InvalidRequest(f"model {model_id!r} is a {row.kind}, not a reward_model"
                                     f"{hint}", param=param, code="not_a_reward_model")
            return await self._load(model_id, row.path, row.metadata)

    async def ensemble(self, model_id: str, param: str,
                       project_id: str | None = None) -> list[LoadedModel]:
        """The members of a registered `reward_ensemble`, each loaded (and cached) on its own."""
        if model_id in self._ensembles:
            await self._recheck(model_id, param)
        if model_id not in self._ensembles:
            row = await asyncio.to_thread(self.lookup, model_id, param)
            self._check_visible(model_id, project_id, param)
            if row.kind != REWARD_ENSEMBLE:
                raise InvalidRequest(f"model {model_id!r} is a {row.kind}, not a reward_ensemble",
                                     param=param, code="not_a_reward_ensemble")
            manifest = json.loads((Path(row.path) / "ensemble.json").read_text())
            metadata = {**row.metadata, "objectives": manifest.get("objectives")}
            self._ensembles[model_id] = [
                str(Path(row.path) / f"member-{i}") for i in range(len(manifest["members"]))]
            self._manifests[model_id] = metadata
        self._check_visible(model_id, project_id, param)
        members = []
        for index, path in enumerate(self._ensembles[model_id]):
            key = f"{model_id}#member-{index}"
            async with self._locks.setdefault(key, asyncio.Lock()):
                if key in self._loaded:
                    members.append(self._touch(key))
                else:
                    members.append(await self._load(key, path, self._manifests[model_id]))
        return members

    async def reference(self, head: ImplicitHead) -> LoadedModel:
        """The reference an implicit reward model subtracts (its frozen base), loaded on first
        use and evicted like any model."""
        assert head.reference is not None
        key = f"reference:{head.reference.path}"
        async with self._locks.setdefault(key, asyncio.Lock()):
            if key in self._loaded:
                return self._touch(key)
            loaded = await asyncio.get_running_loop().run_in_executor(
                FORWARD_THREAD, load_log_prob_model, key, head.reference.path, None,
                self._max_input_tokens, self._make_batcher)
            return self._keep(key, loaded)

    async def _load(self, key: str, path: str, metadata: dict[str, Any]) -> LoadedModel:
        # Loaded on the forward thread too, so that no other thread ever runs torch.
        loaded = await asyncio.get_running_loop().run_in_executor(
            FORWARD_THREAD, load_reward_model, key, path, metadata, self._max_input_tokens,
            self._make_batcher)
        return self._keep(key, loaded)

    def _make_batcher(self, forward: Callable[[list[Any]], list[list[float]]]) -> MicroBatcher[Any]:
        return MicroBatcher(forward, **self._batcher_options)  # type: ignore[arg-type]

    def _keep(self, key: str, loaded: LoadedModel) -> LoadedModel:
        self._observe_cache(False)
        self._loaded[key] = loaded
        self._evict(keep=key)
        return loaded

    def _touch(self, key: str) -> LoadedModel:
        self._observe_cache(True)
        self._loaded.move_to_end(key)
        return self._loaded[key]

    def _evict(self, keep: str) -> None:
        """Drop least recently used models until the budget holds (never `keep`); a request
        that already holds an evicted model finishes with it."""
        while self.resident_bytes > self._capacity and len(self._loaded) > 1:
            key = next(k for k in self._loaded if k != keep)
            del self._loaded[key]  # its batcher's task ends once its queue is empty

    async def close(self) -> None:
        for model in self._loaded.values():
            await model.batcher.close()
        self._loaded.clear()
