"""Registry rows on the request path (`ResolvedModels`) against the real database: read once per
interval, checked against every caller's project and kind, misses never remembered."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from inference.catalog import VALUE_MODEL, ModelCatalog, ResolvedModels, ServedModel
from services.db.engine import session_factory, session_scope
from services.db.models import RegisteredModel
from services.errors import InvalidRequest, NotFound
from services.registry import register_model
from tests.inference.conftest import InferenceWorld


class CountingCatalog(ModelCatalog):
    """The real catalog, counting its registry reads."""

    reads = 0

    def resolve(self, model_id: str, project_id: str | None, *, param: str = "model",
                kinds: tuple[str, ...] = ("base", "fine_tuned", "lora_adapter")) -> ServedModel:
        self.reads += 1
        return super().resolve(model_id, project_id, param=param, kinds=kinds)


@pytest.fixture
def catalog(database_url: str) -> CountingCatalog:
    return CountingCatalog(session_factory(database_url))


def test_a_row_is_read_once_and_checked_for_every_caller(
        catalog: CountingCatalog, inference_world: InferenceWorld) -> None:
    models = ResolvedModels(catalog, ttl_s=60)
    adapter = inference_world.adapter

    async def scenario() -> None:
        assert (await models.resolve(adapter, inference_world.project)).id == adapter
        assert (await models.resolve(adapter, None)).project_id == inference_world.project
        with pytest.raises(NotFound):  # another project's, though remembered
            await models.resolve(adapter, "proj-someone-else")
        with pytest.raises(InvalidRequest, match="is a value_model"):
            await models.resolve(inference_world.values[0], inference_world.project)

    asyncio.run(scenario())
    assert catalog.reads == 2  # the adapter once, the value model once


def test_another_project_learns_neither_the_id_nor_the_kind(
        catalog: CountingCatalog, inference_world: InferenceWorld) -> None:
    """Another project naming this project's value model where a generation model goes gets
    "does not exist", cold and after the owner's own lookup of it, never "is a value_model"."""
    value_model = inference_world.values[0]

    async def scenario(models: ResolvedModels) -> None:
        with pytest.raises(NotFound):
            await models.resolve(value_model, "proj-someone-else")
        assert (await models.resolve(value_model, inference_world.project,
                                     kinds=(VALUE_MODEL,))).id == value_model
        with pytest.raises(NotFound):
            await models.resolve(value_model, "proj-someone-else")
        with pytest.raises(NotFound):
            await models.resolve(value_model, "proj-someone-else", kinds=(VALUE_MODEL,))
        with pytest.raises(InvalidRequest, match="is a value_model"):  # its owner is told
            await models.resolve(value_model, inference_world.project)

    asyncio.run(scenario(ResolvedModels(catalog, ttl_s=60)))


def test_a_miss_is_not_remembered_and_rows_go_stale(
        catalog: CountingCatalog, database_url: str, inference_world: InferenceWorld) -> None:
    model_id = f"vm:late:{uuid.uuid4().hex[:8]}"

    async def resolve(models: ResolvedModels) -> ServedModel:
        return await models.resolve(model_id, inference_world.project, kinds=(VALUE_MODEL,))

    remembering = ResolvedModels(catalog, ttl_s=60)
    with pytest.raises(NotFound):
        asyncio.run(resolve(remembering))
    with session_scope(session_factory(database_url)) as session:
        register_model(session, model_id=model_id, project_id=inference_world.project,
                       kind=VALUE_MODEL, path=str(inference_world.value_paths[0]),
                       base_model=inference_world.base, job_id="late")
    assert asyncio.run(resolve(remembering)).id == model_id  # servable as soon as registered

    forgetting = ResolvedModels(catalog, ttl_s=0)
    asyncio.run(resolve(forgetting))
    with session_scope(session_factory(database_url)) as session:
        session.delete(session.get(RegisteredModel, model_id))
    with pytest.raises(NotFound):  # read again: the row is gone
        asyncio.run(resolve(forgetting))
