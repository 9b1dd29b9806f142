"""The thinking-budget controller (posttrain/scaling/thinking.py) on a scripted token policy.

Vocabulary of the scripted model: OPEN = 100, the close delimiter is TWO tokens (101, 102) so the
stop-sequence path is exercised, the cue is 103, a thinking token is 7, EOS is 0. A prompt is
[1, want]: the model thinks `want` tokens after the open delimiter (or after each cue), then
writes the close; after a close it answers 50 and stops.
"""

import dataclasses

import pytest
from scripted_policy import EOS, PolicyEngine

from posttrain.engines.base import SamplingParams
from posttrain.scaling.thinking import ThinkingDelimiters, answer_part, think_with_budget

OPEN, CLOSE, CUE, THINK, ANSWER = 100, (101, 102), 103, 7, 50
DELIMITERS = ThinkingDelimiters((OPEN,), CLOSE, (CUE,))
GREEDY = SamplingParams(max_new_tokens=1, temperature=0, seed=0)


def policy(context):
    want = context[1]
    segment = context[context.index(OPEN) + 1:]
    pairs = list(zip(segment, segment[1:]))
    if CLOSE in pairs:  # answering
        return ANSWER if tuple(segment[-2:]) == CLOSE else EOS
    if segment and segment[-1] == CLOSE[0]:
        return CLOSE[1]
    since_cue = segment[::-1].index(CUE) if CUE in segment else len(segment)
    return THINK if since_cue < want else CLOSE[0]


def run(wants, budget, mode):
    engine = PolicyEngine(policy)
    results = think_with_budget(engine, [[1, w] for w in wants], budget, mode=mode, delimiters=DELIMITERS,
                                sampling=GREEDY, max_answer_tokens=4)
    return results, engine


def test_cap_forces_the_close_at_exactly_b_thinking_tokens():
    """want 10 > B = 4: four thinking tokens, then the controller appends (101, 102) and the model
    answers 50, EOS. Inserted: the open (1) and the close (2); generated = 1 + 4 + 2 + 2 = 9."""
    (r,), engine = run([10], 4, "cap")
    assert r.token_ids == [OPEN, 7, 7, 7, 7, 101, 102, ANSWER, EOS]
    assert (r.thinking_tokens, r.answer_tokens, r.inserted_tokens, r.suppressed_tokens) == (4, 2, 3, 0)
    assert r.forced_close and r.generated_tokens == 9 and r.answer_text == "50"
    # Room for B thinking tokens and the close after them.
    assert engine.calls[0]["max_new_tokens"] == 4 + 2 and engine.calls[0]["stop_sequences"] == [[101, 102]]


def test_a_close_begun_within_the_budget_is_let_finish():
    """want 3, B = 4: the close (101, 102) starts at thinking token 4 and ends past B. It is the
    model's own close (not thinking), so it is kept whole, not cut into 101 + an appended 101 102."""
    (r,), _ = run([3], 4, "cap")
    assert r.token_ids == [OPEN, 7, 7, 7, 101, 102, ANSWER, EOS]
    assert (r.thinking_tokens, r.forced_close, r.inserted_tokens) == (3, False, 1)
    (r,), _ = run([4], 4, "cap")  # thinking exactly B, then its own close
    assert r.token_ids == [OPEN, 7, 7, 7, 7, 101, 102, ANSWER, EOS] and not r.forced_close


def test_cap_keeps_a_shorter_thinking_the_model_closed_itself():
    """want 3 < B = 10: the model's own close (sampled, so not inserted) ends the thinking."""
    (r,), _ = run([3], 10, "cap")
    assert r.token_ids == [OPEN, 7, 7, 7, 101, 102, ANSWER, EOS]
    assert (r.thinking_tokens, r.inserted_tokens, r.forced_close, r.generated_tokens) == (3, 1, False, 8)


def test_budget_zero_is_no_thinking_and_one_answer_call():
    results, engine = run([3, 10], 0, "force")
    for r in results:
        assert r.token_ids == [OPEN, 101, 102, ANSWER, EOS]
        assert (r.thinking_tokens, r.answer_tokens, r.inserted_tokens) == (0, 2, 3)
    assert len(engine.calls) == 1 and engine.calls[0]["stop_sequences"] is None


def test_force_suppresses_an_early_close_and_inserts_the_cue():
    """want 3, B = 10. Round 1: 7 7 7 then (101, 102) at 3 < 10: cut, cue -> 4 thinking. Round 2:
    7 7 7 + close at 3 < 6 left: cut, cue -> 8. Round 3: 2 left: 7 7, budget spent, close appended.
    Thinking = 10; two closes suppressed (4 tokens generated, not in the sequence); inserted = open
    + 2 cues + the forced close = 5; generated = len(token_ids) 15 + 4 = 19."""
    (r,), engine = run([3], 10, "force")
    assert r.token_ids == [OPEN, 7, 7, 7, CUE, 7, 7, 7, CUE, 7, 7, 101, 102, ANSWER, EOS]
    assert (r.thinking_tokens, r.cues, r.suppressed_tokens, r.inserted_tokens) == (10, 2, 4, 5)
    assert r.forced_close and r.generated_tokens == 19
    # 3 thinking rounds (the budget left + room for the close), then the answer
    assert [c["max_new_tokens"] for c in engine.calls] == [12, 8, 4, 4]


def test_force_batches_rounds_and_drops_what_a_row_sampled_past_its_budget():
    """wants 3 and 5, B = 10. Round 1 (both): row A thinks 3 (+cue = 4), row B 5 (+cue = 6).
    Round 2 (both, max 6 + 2 new): A: 3 + close, cut, cue -> 8; B has 4 left but samples 7 7 7 7 7
    101 102: it keeps 4 and gets the close appended (the 3 extra tokens are neither kept nor counted).
    Round 3: A alone. Then ONE answer call for both. B generated its 15 ids plus the suppressed
    close of round 1 (2): 17."""
    (a, b), engine = run([3, 5], 10, "force")
    assert [len(c["prompts"]) for c in engine.calls] == [2, 2, 1, 2]
    assert b.token_ids == [OPEN] + [7] * 5 + [CUE] + [7] * 4 + [101, 102, ANSWER, EOS]
    assert (b.thinking_tokens, b.suppressed_tokens, b.generated_tokens) == (10, 2, 17)
    assert a.thinking_tokens == 10
    # The contexts are the prompt plus the ids so far, appended, never re-tokenised.
    assert engine.calls[1]["prompts"][1] == [1, 5, OPEN] + [7] * 5 + [CUE]


def test_a_model_that_stops_inside_its_thinking_gives_no_answer():
    def stops(context):
        return EOS if len(context) > 4 else THINK
    results = think_with_budget(PolicyEngine(stops), [[1, 2]], 8, mode="cap", delimiters=DELIMITERS,
                                sampling=GREEDY, max_answer_tokens=4)
    assert results[0].finish_reason == "thinking" and results[0].answer_text == ""
    assert results[0].token_ids == [OPEN, 7, 7, EOS]


def test_bad_arguments_are_refused():
    engine = PolicyEngine(policy)
    with pytest.raises(ValueError, match="budget"):
        think_with_budget(engine, [[1, 1]], -1, mode="cap", delimiters=DELIMITERS, sampling=GREEDY,
                          max_answer_tokens=1)
    with pytest.raises(ValueError, match="cue"):
        think_with_budget(engine, [[1, 1]], 4, mode="force", delimiters=ThinkingDelimiters((OPEN,), CLOSE),
                          sampling=GREEDY, max_answer_tokens=1)
    with pytest.raises(ValueError, match="one continuation"):
        think_with_budget(engine, [[1, 1]], 4, mode="cap", delimiters=DELIMITERS,
                          sampling=dataclasses.replace(GREEDY, n=2), max_answer_tokens=1)
    with pytest.raises(ValueError, match="close delimiter"):
        ThinkingDelimiters((OPEN,), ())


def test_answer_part_reads_after_the_last_close():
    assert answer_part("<think>1+2=3</think>3", "<think>", "</think>") == "3"
    assert answer_part("<think>1+2=3", "<think>", "</think>") == ""  # never closed: no answer
    assert answer_part("3", "<think>", "</think>") == "3"  # no segment: all of it
