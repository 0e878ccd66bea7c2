"""The session turnstile: a session's calls run one at a time, in the order each caller sent them.

(How many ops an actor runs at once is bounded by Ray itself: the actor's
default thread group has ``limits.concurrency`` threads.)
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

SEQ_WAIT_S = 30.0  # how long a session call waits for an earlier one that never arrived


@dataclass
class SessionSlot:
    """One session's state on this actor, and the turnstile that orders its calls."""

    state: dict[str, Any] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)
    next_seq: dict[str, int] = field(default_factory=dict)
    restored: bool = False  # after a restore, a caller's first call sets its sequence
    busy: bool = False
    last_used: float = field(default_factory=time.time)
    saved: bytes | None = None  # digest of the state this actor last stored as the session's checkpoint


class Turn:
    """A context manager that waits for a session call's turn; yields the session's state (None outside one)."""

    def __init__(self, slot: SessionSlot | None, seq: int | None, caller: str) -> None:
        self.slot, self.seq, self.caller = slot, seq, caller

    def __enter__(self) -> dict[str, Any] | None:
        slot = self.slot
        if slot is None:
            return None
        deadline = time.monotonic() + SEQ_WAIT_S
        with slot.cond:
            if self.seq is not None and slot.restored:
                slot.next_seq.setdefault(self.caller, self.seq)
            while True:
                if slot.busy:  # the running call notifies when it ends: block until then, never spin
                    slot.cond.wait()
                elif self.seq is not None and slot.next_seq.get(self.caller, 0) < self.seq:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break  # an earlier call never arrived: don't wait on it forever
                    slot.cond.wait(timeout=left)
                else:
                    break
            slot.busy = True
        return slot.state

    def __exit__(self, *exc: object) -> None:
        slot = self.slot
        if slot is not None:
            with slot.cond:
                slot.busy = False
                slot.last_used = time.time()
                if self.seq is not None:
                    slot.next_seq[self.caller] = self.seq + 1
                slot.cond.notify_all()
