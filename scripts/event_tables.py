"""Print the field tables of every command, event and engine output as Markdown.

    python scripts/event_tables.py > /tmp/tables.md

docs/events.md embeds these tables; tests/test_docs.py fails if a field is missing there.
"""

from __future__ import annotations

import msgspec

from ledger.commands import COMMAND_TYPES
from ledger.events import BALANCE_EVENT_TYPES
from matching.events import ENGINE_OUTPUT_TYPES


def type_name(annotation: object) -> str:
    text = repr(annotation)
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


if __name__ == "__main__":
    for group in (COMMAND_TYPES, BALANCE_EVENT_TYPES, ENGINE_OUTPUT_TYPES):
        for kind in group:
            print(table(kind))
