"""`AlignClient.follow` when a job ends between its read of the job and its read of the
events: the last pair is the job as it ended, and `alignd jobs follow` exits with its status.

No worker runs in this module, so a cancelled job is cancelled at once (a worker's running job
would end only at its next step, and the race would not be staged)."""

from __future__ import annotations

from typing import Any

import httpx
from rich.console import Console

from cli.follow import follow_job
from services.client import AlignClient
from tests.api.test_files import upload
from tests.data import jsonl, supervised_rows
from tests.trainer.test_worker import start_job


class EndsBetweenReads(AlignClient):
    """The real client, with the job cancelled (over the api) after `follow` has read the job
    and before it reads the events: the terminal event then arrives with the job as it was."""

    cancelled = False

    def events_since(self, job_id: str, after: str | None) -> list[dict[str, Any]]:
        if not self.cancelled:
            self.cancelled = True
            self.cancel_job(job_id)
        return super().events_since(job_id, after)


def test_follow_ends_with_the_job_as_it_ended_when_it_ends_between_reads(
        api_url: str, key: str, client: httpx.Client) -> None:
    training = upload(client, jsonl(supervised_rows(8))).json()["id"]
    job_id = start_job(client, training, n_epochs=100)
    with EndsBetweenReads(api_url, key) as racing:
        pairs = list(racing.follow(job_id, poll=0.01))
    assert pairs[-1][0] is None and pairs[-1][1]["status"] == "cancelled"
    assert any(event is not None and event["message"].startswith("job cancelled")
               and job["status"] != "cancelled" for event, job in pairs)  # the staged race

    job_id = start_job(client, training, n_epochs=100)
    with EndsBetweenReads(api_url, key) as racing:  # `alignd jobs follow`'s exit status
        assert follow_job(racing, job_id, Console(quiet=True))["status"] == "cancelled"
