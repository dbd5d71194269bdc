"""A teaching quiz over a run's labelled images: which case comes next, and the learner's score.

The educator chooses the class mix (a share of positive cases, or the run's own mix) and the
pool (a region, say); cases then come without repeats until every case of the pool has been
shown, in an order fixed by the seed, so that a class can replay the same quiz. While both
classes still have unseen cases each draw is positive with the chosen share; once one class is
used up the other fills the rest of the round, then a new round starts. The learner's score is
kept per class (sensitivity and specificity of the learner, as the model's are on Metrics).
No Streamlit here: the Teaching page keeps a ``Quiz`` in its session and lays it out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Attempt:
    """One answered case: what it was, what the learner said, what the model gave it."""

    case: str
    truth: int
    answer: int
    probability: float
    study_id: str = ""

    @property
    def right(self) -> bool:
        return self.answer == self.truth


@dataclass(frozen=True)
class Score:
    """The learner's score: right out of asked, and per class (None before any such case)."""

    right: int
    asked: int
    sensitivity: float | None  # share of the positive cases answered positive
    specificity: float | None  # share of the negative cases answered negative
    positives: int
    negatives: int


@dataclass
class Quiz:
    """A learner's quiz for one session: the round's shown cases and every answer.

    ``positive_share``: the chance that a draw is a positive case while both classes have
    unseen cases; None draws uniformly from the unseen cases (the pool's own mix).
    """

    seed: int = 0
    positive_share: float | None = 0.5
    seen: list[str] = field(default_factory=list)  # this round's cases, in the order shown
    attempts: list[Attempt] = field(default_factory=list)
    rounds: int = 0  # how many times the pool was exhausted and started again
    draws: int = 0  # every draw so far: with the seed, fixes the next one

    def __post_init__(self) -> None:
        check_share(self.positive_share)

    def next_case(self, labels: Mapping[str, int]) -> str:
        """The next case of the pool ``labels`` (case -> 0/1), recorded as seen.

        Raises ValueError for an empty pool. Cases seen in this round are not drawn again
        until every case of the pool has been seen; then the round starts over.
        """
        if not labels:
            raise ValueError("the quiz has no case to draw from: choose another region")
        seen = set(self.seen)
        unseen = [case for case in labels if case not in seen]
        if not unseen:
            self.seen, self.rounds, unseen = [], self.rounds + 1, list(labels)
        rng = np.random.default_rng([self.seed, self.draws])
        self.draws += 1
        positives = [case for case in unseen if int(labels[case]) == 1]
        negatives = [case for case in unseen if int(labels[case]) != 1]
        if self.positive_share is None or not positives or not negatives:
            choices = sorted(unseen)
        else:
            choices = sorted(positives if rng.random() < self.positive_share else negatives)
        case = choices[int(rng.integers(len(choices)))]
        self.seen.append(case)
        return case

    def record(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)

    def reset(self) -> None:
        """Forget the answers and the round (the seed and the mix stay)."""
        self.seen, self.attempts, self.rounds, self.draws = [], [], 0, 0

    def score(self) -> Score:
        return learner_score(self.attempts)

    def missed(self) -> list[Attempt]:
        """The cases answered wrongly, latest first, each case once."""
        latest: dict[str, Attempt] = {}
        for attempt in self.attempts:
            if not attempt.right:
                latest.pop(attempt.case, None)
                latest[attempt.case] = attempt
        return list(reversed(latest.values()))


def learner_score(attempts: list[Attempt]) -> Score:
    """Right/asked and the learner's sensitivity and specificity over ``attempts``."""
    positives = [a for a in attempts if a.truth == 1]
    negatives = [a for a in attempts if a.truth != 1]

    def share(group: list[Attempt]) -> float | None:
        return sum(a.right for a in group) / len(group) if group else None

    return Score(
        right=sum(a.right for a in attempts),
        asked=len(attempts),
        sensitivity=share(positives),
        specificity=share(negatives),
        positives=len(positives),
        negatives=len(negatives),
    )


def check_share(share: float | None) -> None:
    if share is not None and not 0.0 <= share <= 1.0:
        raise ValueError(f"the share of positive cases must be between 0 and 1, not {share}")
