"""The log guard (support.py, conftest.py): an ERROR record or a traceback that the test did not
declare fails the test, in a `siot serve` log and in this process's `siot` loggers."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from support import LogGuard, SiotProcess, UnexpectedLogErrors, log_blocks, unexpected_blocks

TS = "2025-01-02 03:04:05,678"
TRACEBACK = """Traceback (most recent call last):
  File "/x/store/store.py", line 1, in _apply
    raise sqlite3.OperationalError("cannot start a transaction within a transaction")
sqlite3.OperationalError: cannot start a transaction within a transaction"""


def test_a_record_and_its_traceback_are_one_block() -> None:
    log = f"{TS} INFO siot.app: ready\n{TS} ERROR siot.store.store: commit failed\n{TRACEBACK}\n"
    blocks = log_blocks(log + f"{TS} INFO siot.app: x")
    assert len(blocks) == 3
    assert blocks[1].startswith(f"{TS} ERROR") and blocks[1].endswith("within a transaction")


def test_errors_and_tracebacks_are_caught_unless_expected() -> None:
    info = f"{TS} INFO siot.app: ready\nsecond line of a message"
    error = f"{TS} ERROR siot.sync.cursors: sync: saving cursors failed; will retry\n{TRACEBACK}"
    critical = f"{TS} CRITICAL siot.app: gone"
    warning_with_traceback = f"{TS} WARNING siot.client: retrying\n{TRACEBACK}"
    # Python's own report of an exception nobody handled (a thread, a __del__), after an INFO record
    printed = f"{TS} INFO siot.app: stopping\nException in thread writer:\n{TRACEBACK}"
    log = "\n".join([info, error, critical, warning_with_traceback, printed, info])
    assert unexpected_blocks(log) == [error, critical, warning_with_traceback, printed]
    assert unexpected_blocks(log, [r"saving cursors failed", r"CRITICAL siot\.app: gone"]) == [
        warning_with_traceback,
        printed,
    ]
    # the regex may match the exception in the traceback rather than the message
    assert unexpected_blocks(error, [r"OperationalError: cannot start a transaction"]) == []
    # output before the first record (a crash at import) is a block of its own
    assert unexpected_blocks(f"{TRACEBACK}\n{TS} INFO siot.app: x") == [TRACEBACK]
    assert unexpected_blocks(f"{TS} WARNING siot.api: bad request on p.x: not msgpack\n{info}") == []


def append(proc: SiotProcess, text: str) -> None:
    """A line as if the daemon had written it (the log is opened for appending by both)."""
    assert proc.log_path is not None
    with open(proc.log_path, "a") as f:
        f.write(text + "\n")


def test_a_real_daemon_log_is_checked_at_kill_and_at_stop(tmp_path: Path) -> None:
    proc = SiotProcess(data_dir=tmp_path / "d").start()
    append(proc, f"{TS} ERROR siot.test: provoked 1")
    with pytest.raises(UnexpectedLogErrors, match=r"(?s)1 unexpected error.*ERROR siot.test: provoked 1"):
        proc.kill()  # what was written up to the kill

    proc.expect_error(r"siot\.test: provoked \d").start()
    append(proc, f"{TS} ERROR siot.test: provoked 2")  # expected
    append(proc, f"{TS} WARNING siot.test: swallowed\n{TRACEBACK}")
    # only the traceback: the expected error passes, and the first is not reported twice; a
    # start and a stop of a real daemon log nothing else that fails
    with pytest.raises(UnexpectedLogErrors, match=r"(?s)^1 unexpected error.*swallowed.*a transaction"):
        proc.stop()
    assert "siot: stopped" in proc.log()


def test_the_in_process_guard_catches_errors_and_tracebacks_unless_expected() -> None:
    # its own logger tree: errors in `siot` loggers would also fail this test, under its own guard
    log = logging.getLogger("guarded.inprocess")
    guard = LogGuard([r"expected \d+", r"ValueError: invalid literal"], logger="guarded")
    log.warning("bad input from a device")  # not an error
    log.error("expected 42")
    log.error("unexpected one")
    try:
        int("x")
    except ValueError:
        log.exception("oops")  # expected: the regex matches its traceback
    try:
        {}["k"]
    except KeyError:
        log.warning("swallowed", exc_info=True)
    logging.getLogger("elsewhere").error("not a siot logger")
    [failure] = guard.finish()
    assert failure.startswith("2 unexpected error(s) in this process's guarded loggers")
    assert "ERROR guarded.inprocess: unexpected one" in failure
    assert "WARNING guarded.inprocess: swallowed" in failure and "KeyError: 'k'" in failure
    assert "expected 42" not in failure and "oops" not in failure and "elsewhere" not in failure


@pytest.mark.expect_errors(r"siot\.test\.inprocess: provoked")
def test_the_marker_declares_expected_in_process_errors() -> None:
    logging.getLogger("siot.test.inprocess").error("provoked")
