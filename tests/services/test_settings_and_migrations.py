"""Settings refuse unsafe production values; services refuse an unmigrated database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from services.db.migrate import current_revision, ensure_migrated, head_revision, upgrade
from services.errors import DatabaseNotMigrated
from services.settings import (
    DEVELOPMENT_ADMIN_KEY,
    AlignSettings,
    ApiSettings,
    InferenceSettings,
)
from tests.conftest import new_database


def test_production_refuses_the_development_admin_key() -> None:
    with pytest.raises(ValidationError, match="ALIGND_ADMIN_KEY"):
        AlignSettings(environment="production", database_url="postgresql+psycopg://x/y",
                      broker_url="redis://x", admin_key=DEVELOPMENT_ADMIN_KEY)


def test_production_refuses_embedded_mode() -> None:
    with pytest.raises(ValidationError, match="ALIGND_DATABASE_URL"):
        AlignSettings(environment="production", admin_key="a-real-secret", database_url=None,
                      broker_url=None)


def test_vllm_engines_that_would_not_fit_together_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"would reserve 150% .* at most 1"):
        InferenceSettings(_env_file=None, engine="vllm",  # type: ignore[call-arg]
                          vllm_max_loaded_models=3, vllm_gpu_memory_utilization=0.5)
    fits = InferenceSettings(_env_file=None, engine="vllm",  # type: ignore[call-arg]
                             vllm_max_loaded_models=3, vllm_gpu_memory_utilization=0.3)
    sized = InferenceSettings(_env_file=None, engine="vllm",  # type: ignore[call-arg]
                              vllm_max_loaded_models=3, vllm_kv_cache_gib=0.5)
    assert (fits.vllm_max_loaded_models, sized.vllm_kv_cache_gib) == (3, 0.5)


def test_settings_come_from_alignd_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGND_MAX_UPLOAD_BYTES", "1234")
    monkeypatch.setenv("ALIGND_BASE_MODELS", '{"tiny": "/models/tiny"}')
    settings = ApiSettings()
    assert settings.max_upload_bytes == 1234 and settings.base_models == {"tiny": "/models/tiny"}
    assert settings.embedded == (settings.database_url is None)


@pytest.fixture
def empty_database() -> Iterator[str]:
    with new_database("alignd_empty") as url:
        yield url


def test_unmigrated_database_is_refused_until_migrated(empty_database: str) -> None:
    with pytest.raises(DatabaseNotMigrated, match="alignd migrate"):
        ensure_migrated(empty_database)
    upgrade(empty_database)
    assert current_revision(empty_database) == head_revision()
    ensure_migrated(empty_database)
    upgrade(empty_database)  # idempotent


def test_api_refuses_to_start_on_an_unmigrated_database(empty_database: str) -> None:
    from fastapi.testclient import TestClient

    from api.main import create_app

    app = create_app(ApiSettings(database_url=empty_database, broker_url="redis://127.0.0.1:6379/0"))
    with pytest.raises(DatabaseNotMigrated), TestClient(app):
        pass
