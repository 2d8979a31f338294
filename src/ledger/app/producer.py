"""Commands onto balance.operations, checked against the schema before anything is sent.

The entry point for clients of the services: a command off the schema (a float amount,
a bool side, an id beyond 64 bits, a command over ``COMMAND_BYTES_MAX``) raises
``CommandError`` naming the field, and nothing of its batch is appended. On Kafka the
log's producer is idempotent and writes the partition the log names, chosen by the
caller, never by a client library's key hash.
"""

from __future__ import annotations

from collections.abc import Sequence

from ledger.logs.base import Log
from ledger.protocol.codec import check_command
from ledger.protocol.commands import Command


class CommandProducer:
    """Appends checked commands to ``log`` (balance.operations, one partition)."""

    def __init__(self, log: Log) -> None:
        self.log = log

    def send(self, commands: Sequence[Command]) -> int:
        """Check every command, then append them as one batch; return the offset of the
        first. A ``CommandError`` from any of them appends none."""
        records = [check_command(command) for command in commands]
        return self.log.append(records)
