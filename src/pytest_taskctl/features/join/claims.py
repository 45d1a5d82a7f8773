"""What the queue hands out and acknowledges: a claim, as held and as acknowledged."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Claim:
    index: int
    #: The claim key's mod revision: acknowledgements are fenced on it.
    revision: int
    deaths: int
    #: Its place in this process's claim order (the claim record's ``s``).
    seq: int = 0


@dataclass(frozen=True)
class Held:
    """A claim as the mirror knows it: whose, in which order it was claimed, deaths so far.

    ``threads``: how many tests its process runs at once (``--thread``);
    ``started``: such a process marked the claim when the test started.
    """

    worker: str
    seq: int
    deaths: int
    threads: int = 1
    started: bool = False


@dataclass
class Ack:
    claim: Claim
    result_key: str
    result: str
    landed: threading.Event
