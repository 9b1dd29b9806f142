"""Module-level reward functions for tests that run rewards in worker processes.

Kept in a module of their own with light imports: a worker process imports the module of the
function it runs, and a test module that imports torch would cost seconds per worker start.
"""

import time

from posttrain.envs.arithmetic import arithmetic_reward


def hangs_on_prompt_b(prompt, completion, answer, **row):
    """Hangs (20 s) on prompt "b", else the arithmetic reward."""
    if prompt == "b":
        time.sleep(20)
    return arithmetic_reward(prompt, completion, answer)


def nan_reward(prompt, completion, **row):
    return float("nan")
