"""The teaching quiz's logic (nextray_core.quiz): class mix, no repeats, the learner's score."""

from __future__ import annotations

import pytest

from nextray_core.quiz import Attempt, Quiz, learner_score


def pool(n: int, positives: int) -> dict[str, int]:
    return {f"case{i:03d}": int(i < positives) for i in range(n)}


@pytest.mark.parametrize("seed", range(5))
def test_a_balanced_quiz_shows_about_half_positives_from_a_pool_with_ten_percent(seed):
    cases = pool(400, 40)
    quiz = Quiz(seed=seed, positive_share=0.5)
    drawn = [quiz.next_case(cases) for _ in range(40)]
    share = sum(cases[c] for c in drawn) / len(drawn)
    assert 0.3 <= share <= 0.7, share  # the pool's own mix would give about 0.1


def test_the_runs_own_mix_follows_the_pool_and_a_chosen_share_is_kept():
    cases = pool(400, 40)
    own = Quiz(seed=1, positive_share=None)
    assert sum(cases[own.next_case(cases)] for _ in range(100)) <= 20  # about 10 of 100
    mostly = Quiz(seed=1, positive_share=0.9)
    assert sum(cases[mostly.next_case(cases)] for _ in range(30)) >= 22  # about 27 of 30
    never = Quiz(seed=1, positive_share=0.0)
    assert sum(cases[never.next_case(cases)] for _ in range(100)) == 0


def test_no_case_repeats_until_the_pool_is_exhausted_then_a_new_round_starts():
    cases = pool(30, 3)
    quiz = Quiz(seed=3)
    first = [quiz.next_case(cases) for _ in range(30)]
    assert sorted(first) == sorted(cases)  # every case once, positives used up early
    assert quiz.rounds == 0
    second = [quiz.next_case(cases) for _ in range(30)]
    assert sorted(second) == sorted(cases) and quiz.rounds == 1
    assert second != first  # a new order, not a replay


def test_the_same_seed_replays_the_same_quiz_and_another_seed_does_not():
    cases = pool(50, 10)
    one, two, other = Quiz(seed=7), Quiz(seed=7), Quiz(seed=8)
    first = [one.next_case(cases) for _ in range(20)]
    assert first == [two.next_case(cases) for _ in range(20)]
    assert first != [other.next_case(cases) for _ in range(20)]


def test_a_narrower_pool_skips_what_was_seen_and_an_empty_pool_says_so():
    cases = pool(20, 10)
    quiz = Quiz(seed=0)
    seen = {quiz.next_case(cases) for _ in range(10)}
    part = {c: cases[c] for c in list(cases)[:12]}  # a region, say
    rest = [c for c in part if c not in seen]
    assert {quiz.next_case(part) for _ in range(len(rest))} == set(rest)
    with pytest.raises(ValueError, match="another region"):
        quiz.next_case({})
    with pytest.raises(ValueError, match="between 0 and 1"):
        Quiz(positive_share=1.5)


def test_the_learner_score_per_class_and_the_missed_cases():
    attempts = [
        Attempt("a", truth=1, answer=1, probability=0.9),
        Attempt("b", truth=1, answer=0, probability=0.7),
        Attempt("c", truth=0, answer=0, probability=0.2),
        Attempt("d", truth=0, answer=1, probability=0.4),
        Attempt("e", truth=0, answer=0, probability=0.1),
    ]
    score = learner_score(attempts)
    assert (score.right, score.asked) == (3, 5)
    assert score.sensitivity == pytest.approx(1 / 2)
    assert score.specificity == pytest.approx(2 / 3)
    assert learner_score(attempts[2:3]).sensitivity is None
    quiz = Quiz()
    for attempt in [*attempts, Attempt("b", truth=1, answer=0, probability=0.7)]:
        quiz.record(attempt)
    assert [a.case for a in quiz.missed()] == ["b", "d"]  # latest first, each case once
    quiz.reset()
    assert quiz.score().asked == 0 and quiz.missed() == [] and quiz.seen == []
