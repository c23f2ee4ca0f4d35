"""The user verbs of the real `alignd` command (typer's CliRunner) against the real api on
loopback: whole ids in 80-column tables, --json and --quiet, and one line on stderr for every
error the api answers with or for its absence."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import typer
from click.testing import Result
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from cli.main import app
from cli.user import reports_errors
from services.client import AlignClient
from services.web import free_port
from tests.api.test_files import upload
from tests.conftest import BASE_MODEL_ID
from tests.data import jsonl, supervised_rows

LONG_NAME = "a-rather-long-name-for-a-training-file-of-arithmetic.jsonl"


def alignd(*args: str, url: str, key: str) -> Result:
    """`alignd ARGS` in an 80-column terminal."""
    return CliRunner().invoke(app, list(args), env={
        "COLUMNS": "80", "ALIGND_API_URL": url, "ALIGND_API_KEY": key, "ALIGND_ADMIN_KEY": key})


@pytest.fixture
def project(client: httpx.Client, database_url: str) -> dict[str, list[str]]:
    """Two files, two queued jobs, the first with a fine-tuned model (its id 54 characters)."""
    files = [upload(client, jsonl(supervised_rows(n)), name=LONG_NAME).json()["id"]
             for n in (3, 4)]
    body = {"model": BASE_MODEL_ID, "training_file": files[0], "suffix": "arithmetic",
            "method": {"type": "supervised"}}
    jobs = [client.post("/v1/fine_tuning/jobs", json=body).json()["id"] for _ in range(2)]
    model = f"ft:{BASE_MODEL_ID}:arithmetic:{jobs[0]}"
    with create_engine(database_url).begin() as conn:
        owner = conn.execute(text("select project_id from jobs where id = :j"),
                             {"j": jobs[0]}).scalar_one()
        conn.execute(text("insert into models (id, project_id, kind, path, base_model, job_id) "
                          "values (:m, :p, 'fine_tuned', '/nonexistent', :b, :j)"),
                     {"m": model, "p": owner, "b": BASE_MODEL_ID, "j": jobs[0]})
        conn.execute(text("update jobs set fine_tuned_model = :m where id = :j"),
                     {"m": model, "j": jobs[0]})
    return {"files": files, "jobs": jobs, "models": [model]}


def lines(result: Result) -> list[str]:
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


@pytest.mark.parametrize("command, kinds", [
    (["files", "list"], ["files"]), (["jobs", "list"], ["jobs", "models"]),
    (["models"], ["models"])])
def test_tables_show_every_id_whole_in_80_columns(api_url: str, key: str, project: dict,
                                                  command: list[str], kinds: list[str]) -> None:
    shown = lines(alignd(*command, url=api_url, key=key))
    assert all(len(line) <= 80 for line in shown), shown
    for object_id in (i for kind in kinds for i in project[kind]):
        assert any(object_id in line for line in shown), (object_id, shown)


def test_other_columns_give_way_to_ids(api_url: str, key: str, project: dict) -> None:
    shown = "\n".join(lines(alignd("files", "list", url=api_url, key=key)))
    assert LONG_NAME not in shown and LONG_NAME[:10] in shown and "…" in shown


def test_jobs_too_wide_for_a_table_print_as_blocks(api_url: str, key: str,
                                                   project: dict) -> None:
    """A job id and its fine-tuned model's do not fit in 80 columns side by side."""
    shown = lines(alignd("jobs", "list", url=api_url, key=key))
    newer, older = project["jobs"][1], project["jobs"][0]
    assert shown[0] == newer and shown.index(older) > 0  # newest first, each job a block
    block = shown[shown.index(older):]
    assert block[1:4] == ["  status            queued", f"  model             {BASE_MODEL_ID}",
                          f"  fine_tuned_model  {project['models'][0]}"]


@pytest.mark.parametrize("command, path", [
    (["files", "list"], "/v1/files"), (["jobs", "list"], "/v1/fine_tuning/jobs"),
    (["models"], "/v1/models")])
def test_json_is_the_apis_own_objects(api_url: str, key: str, project: dict,
                                      client: httpx.Client, command: list[str], path: str) -> None:
    printed = alignd(*command, "--json", url=api_url, key=key)
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.stdout) == client.get(path).json()["data"]


def test_show_json_and_quiet(api_url: str, key: str, project: dict, client: httpx.Client) -> None:
    job_id = project["jobs"][0]
    shown = alignd("jobs", "show", job_id, "--json", url=api_url, key=key)
    assert json.loads(shown.stdout) == client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert lines(alignd("jobs", "show", job_id, "-q", url=api_url, key=key)) == [job_id]
    events = alignd("jobs", "events", job_id, "--json", url=api_url, key=key)
    assert [e["data"]["status"] for e in json.loads(events.stdout)] == ["validating_files",
                                                                        "queued"]


@pytest.mark.parametrize("command, kind", [
    (["files", "list"], "files"), (["jobs", "list"], "jobs"), (["models"], "models")])
def test_quiet_prints_only_ids(api_url: str, key: str, project: dict, command: list[str],
                               kind: str) -> None:
    printed = lines(alignd(*command, "-q", url=api_url, key=key))
    assert set(project[kind]) <= set(printed)
    if kind != "models":  # the base models are listed too
        assert sorted(printed) == sorted(project[kind])


def test_upload_and_create_quiet_print_the_new_id(api_url: str, key: str, tmp_path: Path,
                                                  client: httpx.Client) -> None:
    data = tmp_path / "train.jsonl"
    data.write_bytes(jsonl(supervised_rows(4)))
    [file_id] = lines(alignd("files", "upload", str(data), "supervised", "-q", url=api_url,
                             key=key))
    [job_id] = lines(alignd("jobs", "create", BASE_MODEL_ID, file_id, "-q", "--hyperparameters",
                            '{"n_epochs": 2}', url=api_url, key=key))
    job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["training_file"] == file_id and job["hyperparameters"]["n_epochs"] == 2


def test_json_and_quiet_together_is_a_usage_error(api_url: str, key: str) -> None:
    printed = alignd("files", "list", "--json", "-q", url=api_url, key=key)
    assert printed.exit_code == 2 and "give one" in printed.stderr


def test_metrics_table_json_and_plot(api_url: str, key: str, project: dict,
                                     database_url: str) -> None:
    job_id = project["jobs"][0]
    with create_engine(database_url).begin() as conn:
        for step, loss in enumerate([2.5, 1.75, 1.25, 1.0], start=1):
            conn.execute(text("insert into job_metrics (job_id, name, step, value) values "
                              "(:j, 'train_loss', :s, :v)"), {"j": job_id, "s": step, "v": loss})
    [row] = [line for line in lines(alignd("jobs", "metrics", job_id, url=api_url, key=key))
             if "train_loss" in line]
    assert row.split() == ["train_loss", "4", "2.5", "1", "4"]
    [series] = json.loads(alignd("jobs", "metrics", job_id, "--json", url=api_url,
                                 key=key).stdout)
    assert series == {"name": "train_loss", "steps": [1, 2, 3, 4],
                      "values": [2.5, 1.75, 1.25, 1.0]}
    chart = lines(alignd("jobs", "metrics", job_id, "--plot", url=api_url, key=key))
    assert "train_loss" in chart[0] and any("step" in line for line in chart[-3:])
    assert len(chart) >= 10 and all(len(line) <= 80 for line in chart)


UNKNOWN_IDS = [
    (["jobs", "show", "ftjob-nope"], "ftjob-nope"),
    (["jobs", "cancel", "ftjob-nope"], "ftjob-nope"),
    (["jobs", "events", "ftjob-nope"], "ftjob-nope"),
    (["jobs", "events", "ftjob-nope", "--follow"], "ftjob-nope"),
    (["jobs", "follow", "ftjob-nope"], "ftjob-nope"),
    (["jobs", "metrics", "ftjob-nope"], "ftjob-nope"),
    (["jobs", "metrics", "ftjob-nope", "--plot"], "ftjob-nope"),
    (["jobs", "create", BASE_MODEL_ID, "file-nope"], "file-nope"),
    (["jobs", "create", "no-such-model", "file-nope"], "does not exist"),
]


def assert_one_error_line(result: Result, *words: str) -> None:
    assert isinstance(result.exception, SystemExit), result.exception  # not a traceback
    assert result.exit_code == 1 and result.stdout == "", result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


@pytest.mark.parametrize("command, words", UNKNOWN_IDS)
def test_an_unknown_id_is_one_line_on_stderr(api_url: str, key: str, command: list[str],
                                             words: str) -> None:
    assert_one_error_line(alignd(*command, url=api_url, key=key), "error 404", words)


EVERY_COMMAND = [["files", "list"], ["files", "upload", "{data}", "supervised"],
                 ["jobs", "list"], ["models"], ["admin", "create-project", "p"],
                 *(command for command, _ in UNKNOWN_IDS)]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_bytes(jsonl(supervised_rows(4)))
    return path


def filled(command: list[str], data_file: Path) -> list[str]:
    return [str(data_file) if word == "{data}" else word for word in command]


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=" ".join)
def test_a_wrong_key_is_one_line_on_stderr(api_url: str, data_file: Path,
                                           command: list[str]) -> None:
    result = alignd(*filled(command, data_file), url=api_url, key="sk-alignd-wrong")
    assert_one_error_line(result, "error 401")


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=" ".join)
def test_no_platform_running_is_one_line_saying_how_to_start_it(data_file: Path,
                                                                command: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = alignd(*filled(command, data_file), url=url, key="sk-alignd-any")
    assert_one_error_line(result, f"cannot reach the alignd api at {url}", "alignd up")


@pytest.fixture
def silent_api() -> Iterator[str]:
    """A loopback port that accepts connections and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def test_a_timeout_is_one_line(silent_api: str, capsys: pytest.CaptureFixture[str]) -> None:
    @reports_errors
    def list_files() -> None:
        with AlignClient(silent_api, "sk-alignd-any", timeout=0.2) as client:
            client.list_files()

    with pytest.raises(typer.Exit) as stopped:
        list_files()
    assert stopped.value.exit_code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == f"error: the alignd api at {silent_api} did not answer " \
                                   "within 0.2 s"


def test_create_project_with_the_admin_key(api_url: str) -> None:
    from tests.conftest import ADMIN_KEY

    name = f"cli-{uuid.uuid4().hex[:8]}"
    created = json.loads(alignd("admin", "create-project", name, url=api_url,
                                key=ADMIN_KEY).stdout)
    assert created["project"]["name"] == name and created["api_key"]["key"].startswith("sk-")


def test_models_shows_what_each_model_was_trained_from(api_url: str, key: str, project: dict,
                                                       database_url: str) -> None:
    """A model trained from a fine-tuned one keeps a flat id; its parent is its own column."""
    parent, job = project["models"][0], project["jobs"][1]
    child = f"ft:{BASE_MODEL_ID}:value:{job}"
    with create_engine(database_url).begin() as conn:
        conn.execute(text("insert into models (id, project_id, kind, path, base_model, job_id) "
                          "select :m, project_id, 'value_model', '/nonexistent', :b, id "
                          "from jobs where id = :j"), {"m": child, "b": parent, "j": job})
    shown = lines(alignd("models", url=api_url, key=key))
    assert any(child in line for line in shown) and any(parent in line for line in shown)
    blocks = "\n".join(shown)
    assert blocks.count(parent) == 2, blocks  # its own row, and as the child's parent


def test_metrics_export_for_tensorboard(api_url: str, key: str, project: dict,
                                        database_url: str, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    job = project["jobs"][0]
    values = {step: 1.0 / step for step in range(1, 6)}
    with create_engine(database_url).begin() as conn:  # as a worker records them
        conn.execute(text("insert into job_metrics (job_id, name, step, value) "
                          "values (:j, 'train_loss', :s, :v)"),
                     [{"j": job, "s": s, "v": v} for s, v in values.items()])
    shown = lines(alignd("jobs", "metrics", job, "--tensorboard", str(tmp_path / "runs"),
                         url=api_url, key=key))
    assert "tensorboard --logdir" in " ".join(shown)
    [written] = (tmp_path / "runs" / job).iterdir()
    assert "tfevents" in written.name
    events = EventAccumulator(str(written.parent))
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("train_loss")} == pytest.approx(values)
    refused = alignd("jobs", "metrics", "ftjob-nope", "--tensorboard", str(tmp_path),
                     url=api_url, key=key)
    assert refused.exit_code == 1 and refused.stderr.startswith("error 404")
