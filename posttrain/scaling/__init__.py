"""Test-time scaling: what more samples (parallel) buy, from scored samples.

`estimators`: unbiased pass@k and pass^k, maj@k with the verifier's answer equivalence, weighted
majority, best-of-N, and bootstrap intervals over prompts -- pure functions of the samples.
"""

from posttrain.scaling.estimators import (
    Sample,
    best_of_k,
    bootstrap_interval,
    bucket_answers,
    majority_at_k,
    pass_at_k,
    pass_hat_k,
    weighted_majority_at_k,
)

__all__ = ["Sample", "best_of_k", "bootstrap_interval", "bucket_answers", "majority_at_k", "pass_at_k",
           "pass_hat_k", "weighted_majority_at_k"]
