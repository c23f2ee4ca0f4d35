"""The dashboard at /ui in headless Chromium on the real api: login, what a project sees, user
strings shown as text, and a real job's curves growing while a worker trains it, cancelled
from the page."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.api.test_files import upload
from tests.conftest import BASE_MODEL_ID, new_project, wait_for
from tests.data import jsonl, supervised_rows
from tests.ui.conftest import Page


def key_of(client: httpx.Client) -> str:
    return client.headers["Authorization"].removeprefix("Bearer ")


def queue_job(client: httpx.Client, training_file: str, **fields: object) -> str:
    body = {"model": BASE_MODEL_ID, "training_file": training_file, **fields,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}}}
    response = client.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def test_the_pages_are_static_with_a_strict_policy_and_outside_the_api_schema(
        api_url: str) -> None:
    with httpx.Client(base_url=api_url) as http:
        assert http.get("/").headers["location"] == "/ui/"
        page = http.get("/ui/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "<script>" not in page.text  # no inline script: the policy would refuse it
        script = http.get("/ui/app.js")
        assert "javascript" in script.headers["content-type"]
        assert "default-src 'none'" in script.headers["content-security-policy"]
        uplot = http.get("/ui/vendor/uPlot.iife.min.js").text
        assert uplot.startswith("/*! https://github.com/leeoniya/uPlot (v1.6.32) */")
        for outside in ("/ui/../main.py", "/ui/routes/ui.py", "/ui/vendor/README.md"):
            assert http.get(outside).status_code == 404, outside
        paths = http.get("/openapi.json").json()["paths"]
        assert not [path for path in paths if path == "/" or path.startswith("/ui")]


def test_a_wrong_key_gets_the_login_page_with_a_clear_message(page: Page) -> None:
    page.log_in("sk-not-a-key-of-anyone")
    message = page.tab.locator("#login-error")
    message.wait_for()
    assert message.inner_text().startswith("This API key was not accepted")
    assert page.tab.locator("#login-view").is_visible()
    assert not page.tab.locator("#jobs-view").is_visible()
    assert page.tab.evaluate("sessionStorage.length") == 0  # a refused key is not kept


def test_a_project_sees_only_its_own_objects(page: Page, browser, client: httpx.Client,
                                             api_url: str, admin: httpx.Client) -> None:
    training = upload(client, jsonl(supervised_rows(8)), name="mine-only.jsonl").json()["id"]
    job_id = queue_job(client, training)
    _, other_key = new_project(admin)

    page.log_in(other_key)
    page.tab.locator("#jobs-table").wait_for()
    page.tab.locator("#jobs-view .empty").wait_for()  # "No jobs."
    page.tab.goto(f"{api_url}/ui/#/files")
    page.tab.locator("#files-view .empty").wait_for()
    assert "mine-only" not in page.tab.content()
    page.tab.goto(f"{api_url}/ui/#/jobs/{job_id}")
    page.tab.locator("#message", has_text="does not exist").wait_for()
    assert page.tab.locator("#job-facts").inner_text() == ""

    owner = Page(browser, api_url)
    try:
        owner.log_in(key_of(client))
        owner.tab.locator("#jobs-table a", has_text=job_id).wait_for()
        owner.tab.select_option("#state-filter", "succeeded")
        owner.tab.locator("#jobs-view .empty").wait_for()
        owner.tab.select_option("#state-filter", "queued")
        owner.tab.locator("#jobs-table a", has_text=job_id).wait_for()
        owner.tab.goto(f"{api_url}/ui/#/files")
        owner.tab.locator("#files-table td", has_text="mine-only.jsonl").wait_for()
        assert owner.errors == []
    finally:
        owner.context.close()
    assert [e for e in page.errors if "status of 404" not in e] == []  # the refused job's fetch


HOSTILE = '<img src=x onerror="window.injected=1"><script>window.injected=2</script>'


def test_user_strings_are_shown_as_text(page: Page, client: httpx.Client, api_url: str) -> None:
    name = f"{HOSTILE.replace('/', '')}.jsonl"  # a file name cannot hold a slash
    training = upload(client, jsonl(supervised_rows(8)), name=name)
    assert training.status_code == 200, training.text
    job_id = queue_job(client, training.json()["id"], metadata={"note": HOSTILE})

    page.log_in(key_of(client))
    page.tab.locator("#jobs-table a", has_text=job_id).click()
    note = page.tab.locator('dd[data-fact="metadata note"]')
    note.wait_for()
    assert note.inner_text() == HOSTILE
    page.tab.goto(f"{api_url}/ui/#/files")
    shown = page.tab.locator("#files-table td", has_text="onerror")
    shown.wait_for()
    assert shown.inner_text() == training.json()["filename"] and "<img" in shown.inner_text()
    assert page.tab.locator("main img, main script").count() == 0
    assert page.tab.evaluate("window.injected") is None
    assert page.errors == []


@pytest.mark.slow
def test_a_running_job_s_curves_grow_and_the_page_cancels_it(
        page: Page, client: httpx.Client, worker_factory, artifact_dir: Path) -> None:
    training = upload(client, jsonl(supervised_rows(64, seed=1))).json()["id"]
    validation = upload(client, jsonl(supervised_rows(16, seed=2))).json()["id"]
    body = {"model": BASE_MODEL_ID, "training_file": training, "validation_file": validation,
            "suffix": "dashboard", "method": {"type": "supervised", "supervised": {
                "hyperparameters": {"n_epochs": 100, "batch_size": 4, "learning_rate": 3e-3,
                                    "eval_every": 4, "checkpoint_every": 1000}}}}
    job_id = client.post("/v1/fine_tuning/jobs", json=body).json()["id"]
    worker = worker_factory()

    page.log_in(key_of(client))
    page.tab.locator("#jobs-table a", has_text=job_id).click()
    loss = page.tab.locator('figure.chart[data-family="loss"]')

    def points() -> int:
        return int(loss.get_attribute("data-points") or 0) if loss.count() else 0

    try:
        wait_for(lambda: points() >= 10, 240, message="the loss chart to show 10 points")
    except AssertionError:
        raise AssertionError(worker.log()) from None
    seen = points()
    wait_for(lambda: points() > seen, 60, message="the loss chart to gain points")
    assert loss.locator("canvas").count() >= 1
    assert not page.tab.locator("#charts-empty").is_visible()
    families = page.tab.locator("figure.chart").evaluate_all(
        "figures => figures.map(f => f.dataset.family)")
    assert {"loss", "learning rate", "throughput"} <= set(families), families
    assert page.tab.locator('dd[data-fact="status"]').inner_text() == "running"
    page.tab.screenshot(path=str(artifact_dir / "dashboard-job.png"), full_page=True)

    page.tab.click("nav >> text=Jobs")
    row = page.tab.locator("#jobs-table tr", has_text=job_id)
    row.locator("td", has_text=re.compile(r"^step \d+ · \d+%$")).wait_for()
    page.tab.screenshot(path=str(artifact_dir / "dashboard-jobs.png"))
    row.locator("a").click()

    page.tab.once("dialog", lambda dialog: dialog.accept())
    page.tab.click("#cancel-job")
    wait_for(lambda: client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"]
             == "cancelled", 60, message="the job to be cancelled")
    page.tab.locator('dd[data-fact="status"]', has_text="cancelled").wait_for()
    assert not page.tab.locator("#cancel-job").is_visible()
    events = page.tab.locator("#events-table").inner_text()
    assert re.search(r"cancellation requested", events), events
    assert page.errors == []
