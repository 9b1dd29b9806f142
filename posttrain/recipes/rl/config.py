"""Temporary: the RL config moves here from recipes/rl_config.py."""
from posttrain.recipes.rl_config import *  # noqa: F401,F403
from posttrain.recipes.rl_config import AlgorithmConfig, CriticConfig, RLConfig, RewardConfig, RolloutConfig, CRITIC_ESTIMATORS  # noqa: F401
