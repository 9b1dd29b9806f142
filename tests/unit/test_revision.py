"""Sequential revision (posttrain/scaling/revision.py) on a scripted engine, and its feedback.

Three prompts [p]. The scripted model answers with one token then EOS; how many feedback blocks
(token 90, three tokens each: 90 91 92) its context holds is the attempt number. Prompt 0 is right
at once; prompt 1 wrong (5), then right (9); prompt 2 wrong every time (1, 2, 3; the right answer
is 7). Gold answers: 4, 9, 7.
"""

from scripted_policy import EOS, PolicyEngine

from posttrain.engines.base import SamplingParams
from posttrain.recipes.sequential_eval import RevisionConfig, feedback_text
from posttrain.scaling.revision import Verdict, revise, revision_curve

GOLD = {0: 4, 1: 9, 2: 7}
SCRIPT = {0: [4], 1: [5, 9], 2: [1, 2, 3]}
FEEDBACK = [90, 91, 92]


def policy(context):
    prompt, attempt = context[0], context.count(90)
    if context[-1] != EOS and len(context) > 1 and context[-1] not in FEEDBACK:
        return EOS
    answers = SCRIPT[prompt]
    return answers[min(attempt, len(answers) - 1)]


def run(rounds):
    engine = PolicyEngine(policy)
    judged = []

    def judge(indices, completions):
        judged.append(list(indices))
        return [Verdict(int(c.text) == GOLD[i], c.text, float(int(c.text) == GOLD[i]))
                for i, c in zip(indices, completions)]

    def follow_up(completion, verdict):
        return feedback_text(RevisionConfig(), verdict.answer), list(FEEDBACK)

    traces = revise(engine, [[0], [1], [2]], SamplingParams(max_new_tokens=4, temperature=0, seed=0), rounds=rounds,
                    judge=judge, follow_up=follow_up)
    return traces, engine, judged


def test_only_wrong_prompts_are_revised_one_call_per_round():
    traces, engine, judged = run(rounds=2)
    assert [len(c["prompts"]) for c in engine.calls] == [3, 2, 1]
    assert judged == [[0, 1, 2], [1, 2], [2]]
    assert [t.solved_at for t in traces] == [0, 1, None]
    assert [[a.answer for a in t.attempts] for t in traces] == [["4"], ["5", "9"], ["1", "2", "3"]]
    # The revision's context is the prompt, the attempt's ids as sampled (EOS included), the feedback ids.
    assert engine.calls[1]["prompts"][0] == [1, 5, EOS, 90, 91, 92]
    assert engine.calls[2]["prompts"][0] == [2, 1, EOS, 90, 91, 92, 2, EOS, 90, 91, 92]


def test_accuracy_is_monotone_and_tokens_are_cumulative():
    """Each attempt is 2 tokens (answer, EOS), each feedback 3, each prompt 1.
    generated after t revisions: t=0 [2,2,2]; t=1 [2,4,4]; t=2 [2,4,6].
    context = prompt + generated + the feedback before the last attempt counted:
    t=0 [3,3,3]; t=1 [3, 1+4+3, 1+4+3]; t=2 [3, 8, 1+6+6]. The last wrong attempt gets no feedback."""
    traces, _, _ = run(rounds=2)
    curve = revision_curve(traces, 2)
    accuracy = [sum(p["correct"]) / 3 for p in curve]
    assert accuracy == [1 / 3, 2 / 3, 2 / 3]
    assert all(a <= b for a, b in zip(accuracy, accuracy[1:]))
    assert [p["generated"] for p in curve] == [[2, 2, 2], [2, 4, 4], [2, 4, 6]]
    assert [p["context"] for p in curve] == [[3, 3, 3], [3, 8, 8], [3, 8, 13]]
    assert traces[2].attempts[-1].feedback == "" and traces[2].attempts[-1].feedback_tokens == 0


def test_feedback_names_the_models_answer_never_the_right_one():
    traces, _, _ = run(rounds=2)
    feedback = [a.feedback for t in traces for a in t.attempts if a.feedback]
    assert feedback == ["Your answer 5 is incorrect. Try again.", "Your answer 1 is incorrect. Try again.",
                        "Your answer 2 is incorrect. Try again."]
    for t in traces:
        assert all(str(GOLD[t.prompt_index]) not in a.feedback for a in t.attempts)
    assert feedback_text(RevisionConfig(), None) == "Your reply has no final answer. Try again."


def test_zero_rounds_is_the_first_attempt_alone():
    traces, engine, _ = run(rounds=0)
    assert len(engine.calls) == 1 and all(len(t.attempts) == 1 for t in traces)
    assert [p["correct"] for p in revision_curve(traces, 0)] == [[1.0, 0.0, 0.0]]
