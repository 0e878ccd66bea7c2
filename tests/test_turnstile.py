"""The session turnstile (runtime/turnstile.py) on real threads: order, and waiting without spinning."""

from __future__ import annotations

import threading
import time

import pytest

from orchestrator.runtime import turnstile
from orchestrator.runtime.turnstile import SessionSlot, Turn


def test_calls_run_in_the_callers_order() -> None:
    slot = SessionSlot()
    ran: list[int] = []

    def call(seq: int) -> None:
        with Turn(slot, seq, "caller"):
            ran.append(seq)

    threads = [threading.Thread(target=call, args=(seq,)) for seq in (2, 0, 1)]  # arrive out of order
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert ran == [0, 1, 2]


def test_a_call_waiting_behind_a_long_one_does_not_spin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(turnstile, "SEQ_WAIT_S", 0.05)  # past this, the old wait looped with a zero timeout
    slot = SessionSlot()
    entered = threading.Event()
    release = threading.Event()

    def long_call() -> None:
        with Turn(slot, 0, "caller"):
            entered.set()
            release.wait(5)

    def second_call() -> None:
        with Turn(slot, 1, "caller"):
            pass

    first = threading.Thread(target=long_call)
    first.start()
    entered.wait(5)
    second = threading.Thread(target=second_call)
    second.start()
    cpu = time.process_time()
    time.sleep(1.0)  # the second call waits all this time
    used = time.process_time() - cpu
    assert second.is_alive(), "the second call ran while the first still held the session"
    release.set()
    first.join(5)
    second.join(5)
    assert not second.is_alive()
    assert used < 0.3, f"waiting burnt {used:.2f} s of CPU in 1 s: the turnstile spins"
