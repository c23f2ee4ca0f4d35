"""`alignd admin models` (typer's CliRunner) against the real api on loopback: a family
checkpoint declared by path is listed to projects at once, a broken one is one line on stderr
saying why, and a declared model is removed."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import httpx

from tests.cli.test_user import alignd
from tests.conftest import ADMIN_KEY


def test_add_list_and_remove_a_base_model(api_url: str, client: httpx.Client,
                                          family_models: dict[str, Path]) -> None:
    model_id = f"cli-gpt2-{uuid.uuid4().hex[:6]}"
    added = alignd("admin", "models", "add", model_id, str(family_models["gpt2"]), url=api_url,
                   key=ADMIN_KEY)
    assert added.exit_code == 0, added.output
    shown = json.loads(added.stdout)
    assert (shown["id"], shown["checkpoint"]["context_length"]) == (model_id, 256)
    assert model_id in {m["id"] for m in client.get("/v1/models").json()["data"]}

    # In 80 columns the id is whole and the other columns give way as the session's other
    # base models need (cli/tables.py): what the checkpoint holds is read from --json.
    table = alignd("admin", "models", "list", url=api_url, key=ADMIN_KEY)
    assert table.exit_code == 0, table.output
    row = next(line for line in table.stdout.splitlines() if model_id in line)
    assert row.startswith(model_id + " ") and "256" in row, row
    listed = alignd("admin", "models", "list", "--json", url=api_url, key=ADMIN_KEY)
    [mine] = [m for m in json.loads(listed.stdout) if m["id"] == model_id]
    assert mine["checkpoint"]["architectures"] == ["GPT2LMHeadModel"]

    removed = alignd("admin", "models", "remove", model_id, url=api_url, key=ADMIN_KEY)
    assert removed.exit_code == 0, removed.output
    assert model_id not in {m["id"] for m in client.get("/v1/models").json()["data"]}


def test_a_broken_checkpoint_is_one_line_saying_why(api_url: str, family_models: dict[str, Path],
                                                    tmp_path: Path) -> None:
    folder = Path(shutil.copytree(family_models["mistral"], tmp_path / "mistral"))
    (folder / "tokenizer.json").unlink()
    result = alignd("admin", "models", "add", "cli-broken", str(folder), url=api_url,
                    key=ADMIN_KEY)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("error 400: base model 'cli-broken' cannot be declared")
    assert "the tokenizer's vocabulary is missing" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_project_key_is_not_the_admin_key(api_url: str, key: str) -> None:
    result = alignd("admin", "models", "list", url=api_url, key=key)
    assert result.exit_code == 1 and result.stderr.startswith("error 401: ")
