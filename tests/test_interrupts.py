"""Ctrl-C stops a job even where library code swallowed the `KeyboardInterrupt` it raised."""

from __future__ import annotations

import os
import signal
import time

import pytest

from raeflow.interrupts import SigintWatch


def _wait_until(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_a_sigint_that_a_handler_swallowed_is_still_raised_at_the_next_check() -> None:
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda signum, frame: None)  # a library that drops Ctrl-C
    try:
        with SigintWatch() as watch:
            watch.check()  # nothing came yet
            os.kill(os.getpid(), signal.SIGINT)
            assert _wait_until(lambda: watch.received)
            with pytest.raises(KeyboardInterrupt):
                watch.check()
    finally:
        signal.signal(signal.SIGINT, previous)


def test_without_a_sigint_nothing_is_raised_and_the_wakeup_descriptor_before_is_restored() -> None:
    before = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(before)
    with SigintWatch() as watch:
        watch.check()
        inside = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(inside)
        assert inside != before
    after = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(after)
    assert after == before
