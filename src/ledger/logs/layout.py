"""The standard layout of a deployment's logs: stream names, directories and topics.

One definition, read by everything that opens a deployment's logs (the demo, the
services, the projector's ``file_sources``, the command line), so a directory written by
one is found by the others.

A file-log deployment is one directory::

    DIR/balance.operations/          commands (clients -> UBSCore)
    DIR/balance.events/              UBSCore's events
    DIR/engine.outputs/<SYMBOL>/     one matching engine stream per symbol

On Kafka the same streams are topics: ``balance.operations``, ``balance.events`` and
``engine.outputs.<SYMBOL>`` (a topic name may not hold ``/``).
"""

from __future__ import annotations

from pathlib import Path

OPERATIONS = "balance.operations"
EVENTS = "balance.events"
OUTPUTS = "engine.outputs"


def output_stream(symbol: str) -> str:
    """The stream name of ``symbol``'s engine outputs (the projector's checkpoint key)."""
    return f"{OUTPUTS}/{symbol}"


def output_topic(symbol: str) -> str:
    """The Kafka topic of ``symbol``'s engine outputs."""
    return f"{OUTPUTS}.{symbol}"


def operations_dir(root: str | Path) -> Path:
    """The command log's directory in a file-log deployment rooted at ``root``."""
    return Path(root) / OPERATIONS


def events_dir(root: str | Path) -> Path:
    """UBSCore's event log directory in a file-log deployment rooted at ``root``."""
    return Path(root) / EVENTS


def outputs_dir(root: str | Path) -> Path:
    """The directory holding one engine output log per symbol."""
    return Path(root) / OUTPUTS


def output_dir(root: str | Path, symbol: str) -> Path:
    """``symbol``'s engine output log directory."""
    return outputs_dir(root) / symbol


def output_symbols(root: str | Path) -> list[str]:
    """The symbols that have an engine output log under ``root``, sorted."""
    outputs = outputs_dir(root)
    if not outputs.is_dir():
        return []
    return sorted(p.name for p in outputs.iterdir() if p.is_dir())
