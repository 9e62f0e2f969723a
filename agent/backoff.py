"""Exponential backoff with jitter, for every retry loop (Kubernetes list/watch,
kubelet registration).

Jitter keeps the agents of a whole cluster from reconnecting in lockstep after
an API server (or kubelet) restart: every node would otherwise retry at the
same instants.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffPolicy:
    initial: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    # Each delay is drawn from [(1 - jitter) * d, d]: a floor keeps a flapping
    # server from being hammered, the spread desynchronises the nodes.
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.cap:
            raise ValueError("backoff needs 0 < initial <= cap")
        if self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ValueError("backoff needs factor >= 1 and 0 <= jitter <= 1")


class Backoff:
    def __init__(self, policy: BackoffPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._rng = rng or random.Random()
        self._failures = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one failure."""
        p = self.policy
        # The exponent is bounded so a long outage cannot overflow the float.
        ceiling = min(p.cap, p.initial * p.factor ** min(self._failures, 64))
        self._failures += 1
        return ceiling * (1 - p.jitter * self._rng.random())

    def reset(self) -> None:
        self._failures = 0

    @property
    def failures(self) -> int:
        return self._failures
