"""`PolicyUpdate`: an update opened before the rewards arrive (its first forward run while the
reward service scores) ends at the weights of one run after them, and a minibatch split into
micro-batches by prompt ends where it does in one piece."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.optim import SGD, AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR

from trainer.algorithms.policy_gradient import clipped_surrogate
from trainer.demo_world.model import build_model
from trainer.demo_world.tokenizer import build_tokenizer
from trainer.online.batch import RolloutBatch
from trainer.online.experience import pack
from trainer.online.shared_prompt import shared_prompt_logits
from trainer.online.update import PolicyUpdate, UpdateSettings, by_prompt

PROMPTS = [[1, 20, 21, 22], [1, 30, 31], [1, 40, 41, 42, 43], [1, 50]]
GROUP = 4


def rollouts() -> tuple[RolloutBatch, list[int]]:
    """Four responses of one to six tokens to each of `PROMPTS`, with advantages; log π_old
    is left for the on-policy update to fill."""
    generator = torch.Generator().manual_seed(3)
    group = [p for p in range(len(PROMPTS)) for _ in range(GROUP)]
    responses = [torch.randint(3, 90, (int(torch.randint(1, 7, (1,), generator=generator)),),
                               generator=generator).tolist() for _ in group]
    sequences, attention_mask, mask = pack([PROMPTS[p] for p in group], responses, 0,
                                           torch.device("cpu"))
    zeros = torch.zeros(mask.shape)
    advantages = torch.randn(mask.shape, generator=generator) * mask
    rows = len(group)
    return RolloutBatch(sequences=sequences, attention_mask=attention_mask, mask=mask,
                        logprobs=zeros.clone(), ref_logprobs=zeros, values=zeros,
                        rewards=torch.zeros(rows), token_rewards=zeros,
                        group=torch.tensor(group), advantages=advantages, returns=zeros,
                        baseline_rewards=torch.zeros(rows)), group


def update(micro_batch_size: int, epochs: int = 1,
           optimizer_type: type[Optimizer] = AdamW) -> tuple[Any, PolicyUpdate]:
    model = build_model(build_tokenizer(), seed=1).train()
    optimizer = optimizer_type(model.parameters(), lr=1e-2)
    settings = UpdateSettings(
        policy_loss=clipped_surrogate, update_epochs=epochs, minibatch_size=16,
        micro_batch_size=micro_batch_size, clip_low=0.2, clip_high=0.2, kl_in_loss=False,
        kl_estimator="k3", entropy_coefficient=0.0, loss_aggregation="token_mean",
        max_new_tokens=6, max_grad_norm=1.0, on_policy=epochs == 1)

    def policy(sequences: torch.Tensor, attention_mask: torch.Tensor, length: int) -> Any:
        return shared_prompt_logits(model, sequences, attention_mask, length)

    return model, PolicyUpdate(policy, model, optimizer, LambdaLR(optimizer, lambda _: 1.0),
                               settings)


@pytest.mark.parametrize("micro_batch_size, epochs", [(16, 1), (8, 1), (8, 2)])
def test_an_opened_update_ends_at_the_weights_of_one_run_after_the_rewards(
        micro_batch_size: int, epochs: int) -> None:
    batch, group = rollouts()
    plain_model, plain = update(micro_batch_size, epochs)
    plain_metrics = plain.run(batch, 0.0, torch.Generator().manual_seed(5))

    batch, group = rollouts()
    opened_model, opened = update(micro_batch_size, epochs)
    generator = torch.Generator().manual_seed(5)
    opening = opened.open(batch.sequences, batch.attention_mask, batch.mask.shape[1], group,
                          generator)
    assert opening.logits.requires_grad and len(opening.rows) == micro_batch_size
    opened_metrics = opened.run(batch, 0.0, generator, opening)

    assert opened_metrics == plain_metrics
    for (name, mine), theirs in zip(opened_model.named_parameters(), plain_model.parameters(),
                                    strict=True):
        assert torch.equal(mine, theirs), name


def test_micro_batches_hold_whole_groups_and_leave_the_minibatch_gradient_alone() -> None:
    assert by_prompt([5, 0, 9, 4, 1, 8], [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]) == [0, 1, 5, 4, 9, 8]
    batch, _ = rollouts()
    # SGD: the step is the gradient's (Adam's would magnify rounding in near-zero entries)
    whole_model, whole = update(16, optimizer_type=SGD)
    whole.run(batch, 0.0, torch.Generator().manual_seed(5))
    batch, _ = rollouts()
    split_model, split = update(4, optimizer_type=SGD)  # a group per micro-batch
    split.run(batch, 0.0, torch.Generator().manual_seed(5))
    for (name, mine), theirs in zip(split_model.named_parameters(), whole_model.parameters(),
                                    strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-5, msg=name)
