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


@dataclass(frozen=True)
class Held:
    """A claim as the mirror knows it: whose, in which order it was claimed, deaths so far."""

    worker: str
    seq: int
    deaths: int


@dataclass
class Ack:
    claim: Claim
    result_key: str
    result: str
    landed: threading.Event
