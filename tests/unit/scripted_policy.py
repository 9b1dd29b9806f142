"""A fake engine that decodes token by token from a scripted policy `context -> next token`, and
honours what SamplingParams asks (max_new_tokens, EOS, stop_sequences), so the thinking-budget
and revision loops can be tested exactly, without a model."""

from __future__ import annotations

from posttrain.engines.base import Completion

EOS = 0


class ScriptedEngineBase:
    """What a scripted engine has no use for: there are no weights to load or share."""

    def load_weights(self, source):
        pass

    def shares_weights(self, model):
        return False

    def close(self):
        pass


class PolicyEngine(ScriptedEngineBase):
    def __init__(self, policy):
        self.policy = policy
        self.calls: list[dict] = []  # per generate call: the prompts it got and its limits

    def generate(self, prompt_ids, sampling):
        self.calls.append({"prompts": [list(p) for p in prompt_ids], "max_new_tokens": sampling.max_new_tokens,
                           "stop_sequences": sampling.stop_sequences})
        out = []
        for i, prompt in enumerate(prompt_ids):
            context, new, reason = list(prompt), [], "length"
            while len(new) < sampling.max_new_tokens:
                token = self.policy(context)
                context.append(token)
                new.append(token)
                if token == EOS or any(new[-len(s):] == list(s) for s in sampling.stop_sequences or []):
                    reason = "stop"
                    break
            shown = new[:-1] if new and new[-1] == EOS else new
            out.append([Completion(i, new, [0.0] * len(new), " ".join(map(str, shown)), reason)])
        return out
