"""The tests' poll helper: returns the first truthy value, retries only what it is told to."""

import pytest

from tests.fixtures.polling import poll_until


def test_returns_the_first_truthy_value():
    answers = iter([0, None, "", "ready"])
    assert poll_until(lambda: next(answers), "an answer", interval=0) == "ready"


def test_retries_the_named_errors_and_names_the_last_one_on_timeout():
    def refuse():
        raise ConnectionRefusedError("not listening yet")

    with pytest.raises(AssertionError, match="the server.*not listening yet"):
        poll_until(refuse, "the server", timeout=0.05, interval=0.01, retry_on=(ConnectionError,))


def test_other_errors_fail_at_once():
    calls = []

    def broken():
        calls.append(1)
        raise KeyError("bug")

    with pytest.raises(KeyError):
        poll_until(broken, "anything", timeout=5)
    assert len(calls) == 1
