"""PivotRL's offline half: candidates cut from expert trajectories, profile statistics on
constructed all-0 / all-1 / mixed groups, the pivot filter, saved profiles."""

import json
import math

import pytest

from posttrain.pivot.candidates import candidates_fingerprint, expert_action, extract_candidates
from posttrain.pivot.profile import (CandidateProfile, is_pivot, load_profiles, profile_candidates,
                                     profile_metrics, profile_stats, save_profiles, select_pivots)

TOOLS = [{"type": "function", "function": {"name": "query", "parameters": {"type": "object", "properties": {}}}}]


def trajectory():
    return {
        "messages": [
            {"role": "system", "content": "You answer questions about workbooks."},
            {"role": "user", "content": "Total revenue?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "list_sheets", "arguments": {}}}]},
            {"role": "tool", "name": "list_sheets", "content": "Sales"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "query", "arguments": '{"sql": "SELECT 1"}'}},
                {"type": "function", "function": {"name": "query", "arguments": {"sql": "SELECT 2"}}}]},
            {"role": "tool", "name": "query", "content": "1"},
            {"role": "tool", "name": "query", "content": "2"},
            {"role": "assistant", "content": "The total is 3."},
        ],
        "tools": TOOLS,
        "file": "book.xlsx",
        "answer": "3",
    }


def test_every_assistant_turn_is_a_candidate_with_the_full_history_before_it():
    candidates = extract_candidates([trajectory(), trajectory()])
    assert [c.id for c in candidates] == ["0:2", "0:4", "0:7", "1:2", "1:4", "1:7"]
    first, parallel, message = candidates[:3]
    assert [m["role"] for m in first.state] == ["system", "user"]
    assert [m["role"] for m in message.state] == ["system", "user", "assistant", "tool", "assistant", "tool", "tool"]
    assert first.action == {"content": "", "tool_calls": [{"name": "list_sheets", "arguments": {}}]}
    # Both calls of a parallel turn make one action; string arguments are decoded.
    assert parallel.action["tool_calls"] == [{"name": "query", "arguments": {"sql": "SELECT 1"}},
                                             {"name": "query", "arguments": {"sql": "SELECT 2"}}]
    assert message.action == {"content": "The total is 3.", "tool_calls": []}
    assert [c.turn for c in candidates[:3]] == [0, 1, 2]
    assert first.task == {"file": "book.xlsx", "answer": "3"} and first.tools == TOOLS


@pytest.mark.parametrize("row, message", [
    ({"messages": []}, "row 0: 'messages' must be a non-empty list"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "the first message is the assistant's"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"function": {}}]}]},
     "row 0, message 1: expert tool_calls\\[0\\] must have a string 'name'"),
    ({"messages": [{"role": "user", "content": "q"},
                   {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}]},
     "message 1: expert tool_calls\\[0\\] \\('f'\\): arguments are not JSON"),
    ({"messages": ["not a dict"]}, "row 0, message 0: expected a dict"),
])
def test_malformed_expert_rows_are_refused_with_the_row_and_message_named(row, message):
    with pytest.raises(ValueError, match=message):
        extract_candidates([row], source="expert.jsonl")


def test_the_fingerprint_changes_with_the_content():
    a = extract_candidates([trajectory()])
    changed = trajectory()
    changed["messages"][1]["content"] = "Total units?"
    assert candidates_fingerprint(a) == candidates_fingerprint(extract_candidates([trajectory()]))
    assert candidates_fingerprint(a) != candidates_fingerprint(extract_candidates([changed]))


def test_profile_statistics_of_constructed_groups():
    assert profile_stats([0.0] * 8) == (0.0, 0.0)
    assert profile_stats([1.0] * 8) == (1.0, 0.0)
    mean, var = profile_stats([1, 0, 0, 0, 1, 0, 0, 0])  # 2 of 8 right: mean 1/4, variance 1/4 · 3/4
    assert mean == 0.25 and var == pytest.approx(0.1875)
    assert profile_stats([1.0, None, 0.0, float("nan")]) == (0.5, 0.25)  # unscorable ones left out
    assert all(math.isnan(x) for x in profile_stats([None, None]))


def profile(cid, rewards):
    return CandidateProfile(cid, rewards, *profile_stats(rewards))


def test_the_filter_keeps_informative_unmastered_candidates_only():
    profiles = [
        profile("all0", [0.0] * 8),                 # nothing to learn from: no variance
        profile("all1", [1.0] * 8),                 # mastered, and no variance
        profile("hard", [1.0] + [0.0] * 7),         # mean 0.125: a pivot
        profile("half", [1.0, 0.0] * 4),            # mean 0.5: a pivot
        profile("easy", [1.0] * 6 + [0.0] * 2),     # mean 0.75 >= 0.6: mostly solved
        profile("edge", [1.0] * 3 + [0.0] * 2),     # mean 0.6 exactly: not < λ
        profile("none", [None] * 8),                # unscorable: never a pivot
        profile("partial", [0.5, 0.25, 0.0, 0.0]),  # graded rewards (F1 over parallel calls) count too
    ]
    assert select_pivots(profiles) == ["hard", "half", "partial"]
    assert select_pivots(profiles, max_mean=0.8) == ["hard", "half", "easy", "edge", "partial"]
    assert select_pivots(profiles, min_variance=0.2) == ["half"]
    assert not is_pivot(profiles[0]) and is_pivot(profiles[2])
    m = profile_metrics(profiles, select_pivots(profiles))
    assert m["pivots/candidates"] == 8 and m["pivots/kept"] == 3
    assert m["pivots/all_zero_fraction"] == 1 / 8 and m["pivots/all_one_fraction"] == 1 / 8
    assert m["pivots/mixed_fraction"] == 5 / 8 and m["pivots/unscorable_fraction"] == 1 / 8
    assert m["pivots/kept_mean_reward"] == pytest.approx((0.125 + 0.5 + 0.1875) / 3)


def test_profiling_samples_k_actions_per_candidate_and_scores_them():
    candidates = extract_candidates([trajectory()])
    calls = []

    def sample(cands, k):
        calls.append(("sample", len(cands), k))
        return [[f"{c.id}/{j}" for j in range(k)] for c in cands]

    def score(cands, texts):
        # Candidate 0 always right, 1 right on even samples, 2 never.
        return [[1.0 if (i == 0 or (i == 1 and int(t.split("/")[1]) % 2 == 0)) else 0.0 for t in row]
                for i, row in enumerate(texts)]

    profiles = profile_candidates(candidates, sample, score, k=4)
    assert calls == [("sample", 3, 4)]
    assert [(p.candidate_id, p.mean, p.variance) for p in profiles] == [("0:2", 1.0, 0.0), ("0:4", 0.5, 0.25),
                                                                        ("0:7", 0.0, 0.0)]
    assert select_pivots(profiles) == ["0:4"]
    with pytest.raises(ValueError, match="K >= 2"):
        profile_candidates(candidates, sample, score, k=1)
    with pytest.raises(ValueError, match="rewards for 3 candidates"):
        profile_candidates(candidates, sample, lambda c, t: [[0.0]] * 3, k=4)


def test_saved_profiles_are_reused_only_for_what_they_were_measured_on(tmp_path):
    profiles = [profile("a", [1.0, 0.0]), profile("b", [0.0, None])]
    meta = {"candidates": "abc", "policy": "sft-model", "k": 2, "seed": 0}
    path = save_profiles(tmp_path / "profiles" / "p.jsonl", profiles, meta)
    assert load_profiles(path, meta) == profiles
    assert load_profiles(path, {**meta, "policy": "other"}) is None
    assert load_profiles(tmp_path / "missing.jsonl", meta) is None
    assert not list((tmp_path / "profiles").glob("*.tmp"))
    path.write_text(path.read_text() + "{broken\n")
    with pytest.raises(ValueError, match="line 4: not a candidate profile"):
        load_profiles(path, meta)
    assert json.loads(path.read_text().splitlines()[0])["meta"]["k"] == 2


def test_the_pivot_reward_scores_a_sampled_turn_against_the_expert_action():
    from posttrain.pivot.reward import candidate_row, exact_action_reward

    _, parallel, message = extract_candidates([trajectory()])
    row = candidate_row(parallel)
    assert row["prompt"] == parallel.state and row["tools"] == TOOLS and row["file"] == "book.xlsx"

    def score(row, text):
        return exact_action_reward(row["prompt"], text, **{k: v for k, v in row.items() if k != "prompt"})

    both = ('<tool_call>\n{"name": "query", "arguments": {"sql": "SELECT 2"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "query", "arguments": {"sql": "SELECT 1"}}\n</tool_call>')
    one = '<tool_call>\n{"name": "query", "arguments": {"sql": "SELECT 1"}}\n</tool_call>'
    assert score(row, both) == 1.0  # order of parallel calls does not matter
    assert score(row, one) == pytest.approx(2 / 3)  # F1: precision 1, recall 1/2
    assert score(row, "The total is 3.") == 0.0  # a message where calls are expected
    assert score(row, "<tool_call>{broken</tool_call>") == 0.0
    text = candidate_row(message)
    assert score(text, "the total is 3.") == 1.0
    assert score(text, "Something else entirely.") == 0.0  # any text is not the expert's message
    assert score(text, one) == 0.0
