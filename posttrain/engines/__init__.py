"""Rollout engines: sample completions (token ids, text, sampler log-probs) for the RL loop.

``HFEngine`` runs any transformers causal LM in-process; other engines (vLLM, Ray workers)
implement the same :class:`Engine` protocol.
"""

from posttrain.engines.base import Completion, Engine, SamplingParams, validate_prompt_ids
from posttrain.engines.hf import HFEngine
from posttrain.engines.sampling import filter_top_k, filter_top_p, reported_logprobs, select_next_tokens

__all__ = [
    "Completion",
    "Engine",
    "HFEngine",
    "SamplingParams",
    "filter_top_k",
    "filter_top_p",
    "reported_logprobs",
    "select_next_tokens",
    "validate_prompt_ids",
]
