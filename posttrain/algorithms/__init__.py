"""Pure functions over tensors for post-training; every shape is documented where it is defined.

    logprobs      token_logprobs: log p(x_t | x_<t), temperature applied
    entropy       entropy_from_logits, aligned with token_logprobs
    masked        masked sum / mean / variance over a response mask
    kl            k1 / k2 / k3 KL estimators (Schulman 2020)
    advantages    grpo, dr_grpo, rloo, reinforce++ (+ baseline), gae, whiten, group stats
    policy_loss   ppo_clip (clip-higher, dual-clip), gspo, DAPO overlong penalty
    value_loss    PPO clipped value loss
    aggregation   token-mean, seq-mean-token-mean, seq-mean-token-sum-norm
    registry      config names -> functions, register_* plug-ins, import paths
    presets       algorithm: grpo | dr_grpo | dapo | rloo | reinforce_pp | gspo | … -> combinations
    sft           supervised fine-tuning loss
"""
