"""The documentation's examples run, and the event catalogue names every field."""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import msgspec
import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_readme_python_blocks_run(capsys) -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    # The README states what its example prints; hold it to that.
    assert "75000000 (19925000000, 75000000)" in printed


@pytest.mark.parametrize(
    "module",
    [
        "ledger",
        "ledger.protocol.market",
        "ledger.ubscore.core",
        "matching",
        "ledger.gctune",
        "ledger.logs.file",
        "ledger.rebuild",
        "ledger.strategies",
        "settlement",
        "settlement.store",
        "settlement.sqlite",
        "ledger.client.signing",
    ],
)
def test_module_doctests(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


def test_event_catalogue_names_every_type_and_field() -> None:
    from ledger.protocol.commands import COMMAND_TYPES
    from ledger.protocol.events import BALANCE_EVENT_TYPES
    from ledger.protocol.outputs import ENGINE_OUTPUT_TYPES

    catalogue = (ROOT / "docs" / "events.md").read_text()
    for kind in (*COMMAND_TYPES, *BALANCE_EVENT_TYPES, *ENGINE_OUTPUT_TYPES):
        section = re.search(rf"^### {kind.__name__}\n(.*?)(?=^#|\Z)", catalogue, re.S | re.M)
        assert section, f"docs/events.md has no section for {kind.__name__}"
        for field in msgspec.structs.fields(kind):
            assert f"`{field.name}`" in section.group(1), f"{kind.__name__}.{field.name} undocumented"


def test_settlement_guide_python_block_runs(tmp_path, monkeypatch, capsys) -> None:
    """docs/settlement.md's example, on logs made by the demo in a scratch directory."""
    from ledger.app.demo import run_demo
    from ledger.logs.file import FsyncPolicy

    monkeypatch.chdir(tmp_path)
    run_demo(tmp_path / "demo-data", users=50, orders=2_000, progress=False, fsync=FsyncPolicy.NEVER)
    text = (ROOT / "docs" / "settlement.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text, re.S)
    exec(compile(block, "docs/settlement.md", "exec"), {})
    printed = capsys.readouterr().out
    assert re.search(r"\{'BTC': \(\d+, \d+\)", printed), printed
