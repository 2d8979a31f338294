"""Field tables of every command, event and engine output, as Markdown.

    python scripts/event_tables.py                          # print them
    python scripts/event_tables.py --update docs/events.md  # rewrite the tables in place

docs/events.md embeds these tables; tests/test_docs.py fails if a field is missing there.
"""

from __future__ import annotations

import msgspec

from ledger.protocol.commands import COMMAND_TYPES
from ledger.protocol.events import BALANCE_EVENT_TYPES
from ledger.protocol.outputs import ENGINE_OUTPUT_TYPES


def type_name(annotation: object) -> str:
    text = repr(annotation)
    if "Meta(ge=-9223372036854775808, le=9223372036854775807)" in text:
        return "int64"
    if "Meta(gt=0, le=9223372036854775807)" in text:
        return "int64 > 0"
    if "Meta(ge=0, le=9223372036854775807)" in text:
        return "int64 >= 0"
    if "Union" in text and "None" in text:
        return "Command or None"
    if "Meta(gt=0)" in text:
        return "int > 0"
    if "Meta(ge=0)" in text:
        return "int >= 0"
    if "Union" in text or "|" in text:
        return "Command"
    return getattr(annotation, "__name__", text)


def table(kind: type) -> str:
    rows = [f"### {kind.__name__}\n", "| # | field | type |", "|---|---|---|"]
    for number, field in enumerate(msgspec.structs.fields(kind), start=1):
        default = "" if field.default is msgspec.NODEFAULT else f" (default {field.default!r})"
        rows.append(f"| {number} | `{field.name}` | {type_name(field.type)}{default} |")
    return "\n".join(rows) + "\n"


def update(path: str) -> None:
    """Replace each ``### Name`` section's table in ``path`` with a fresh one."""
    import re
    from pathlib import Path

    text = Path(path).read_text()
    for group in (COMMAND_TYPES, BALANCE_EVENT_TYPES, ENGINE_OUTPUT_TYPES):
        for kind in group:
            pattern = re.compile(rf"^### {kind.__name__}\n\n(\|.*\n)+", re.M)
            if not pattern.search(text):
                raise SystemExit(f"{path}: no section for {kind.__name__}; add '### {kind.__name__}' by hand")
            text = pattern.sub(lambda _m, k=kind: table(k), text, count=1)
    Path(path).write_text(text)


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--update":
        update(sys.argv[2])
    else:
        for group in (COMMAND_TYPES, BALANCE_EVENT_TYPES, ENGINE_OUTPUT_TYPES):
            for kind in group:
                print(table(kind))
