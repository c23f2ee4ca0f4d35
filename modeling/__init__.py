"""Torch-side pieces that training and scoring must share token for token: prompt/response
encoding and masks (`sequences`), log-probabilities (`logprobs`), reward heads (`heads`).

Imports `services` only; `trainer`, `reward_service` and `inference` import it.
"""
