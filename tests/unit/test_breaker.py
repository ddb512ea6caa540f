"""The circuit breaker: opened by failures in a row or by an error rate, refusing while open, one trial when
the time is up, closed by its success or opened again by its failure, and every change reported."""

from __future__ import annotations

from gateway.upstream.breaker import CLOSED, HALF_OPEN, OPEN, Breaker, BreakerSettings

SETTINGS = BreakerSettings(failures=3, error_rate=0.5, window=10, open_s=5.0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker() -> tuple[Breaker, Clock, list[tuple[str, str]]]:
    clock, changes = Clock(), list[tuple[str, str]]()
    return Breaker("openai:m", SETTINGS, lambda name, state: changes.append((name, state)), clock), clock, changes


def test_failures_in_a_row_open_it_and_it_refuses_until_the_time_is_up() -> None:
    b, clock, changes = breaker()
    for _ in range(2):
        assert b.allow()
        b.failed("boom")
    assert b.state == CLOSED
    b.failed("boom")
    assert b.state == OPEN
    assert changes == [("openai:m", OPEN)]
    assert not b.allow()
    assert b.retry_in_s() == 5.0
    clock.now += 4.9
    assert not b.allow()


def test_a_success_resets_the_count_in_a_row() -> None:
    b, _, _ = breaker()
    for _ in range(5):
        b.failed("boom")
        b.failed("boom")
        b.succeeded()
        b.succeeded()
        b.succeeded()
    assert b.state == CLOSED  # 2 in a row at most, and 40% of the window


def test_an_error_rate_over_half_a_window_opens_it() -> None:
    b, _, _ = breaker()
    for outcome in [True, False, True, False, True]:  # 3 of 5 failed, never 3 in a row
        b.failed("boom") if outcome else b.succeeded()
    assert b.state == OPEN


def test_half_open_lets_one_trial_through_and_its_outcome_decides() -> None:
    b, clock, changes = breaker()
    for _ in range(3):
        b.failed("boom")
    clock.now += 5.0
    assert b.allow()  # the trial
    assert b.state == HALF_OPEN
    assert not b.allow()  # only one
    b.failed("again")
    assert b.state == OPEN
    assert b.opened == 2
    clock.now += 5.0
    assert b.allow()
    b.succeeded()
    assert b.state == CLOSED
    assert b.allow()
    assert [state for _, state in changes] == [OPEN, HALF_OPEN, OPEN, HALF_OPEN, CLOSED]


def test_an_abandoned_trial_lets_another_request_try() -> None:
    b, clock, _ = breaker()
    for _ in range(3):
        b.failed("boom")
    clock.now += 5.0
    assert b.allow()
    b.abandoned()  # the client left
    assert b.allow()


def test_describe_says_what_an_operator_needs() -> None:
    b, _, _ = breaker()
    for _ in range(3):
        b.failed("connection refused")
    described = b.describe()
    assert described["state"] == OPEN
    assert described["last_error"] == "connection refused"
    assert described["retry_in_s"] == 5.0
    assert described["opened"] == 1
