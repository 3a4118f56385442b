"""Communication accounting: what a distributed call put on and took off the wire, per rank."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CommStats:
    """Bytes this rank sent and received. Pass one to a distributed call to have it filled in."""

    bytes_sent: int = 0
    bytes_received: int = 0

    def add(self, sent: int = 0, received: int = 0) -> None:
        self.bytes_sent += int(sent)
        self.bytes_received += int(received)
