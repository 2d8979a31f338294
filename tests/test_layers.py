"""The layers: ``ledger.protocol`` is the vocabulary every layer shares; ``ledger.logs``,
the reducer ``ledger.ubscore``, ``matching`` and ``settlement`` stand on it side by side,
and only ``ledger.app`` wires them together. A static check over the source holds every
import (inside functions and ``if TYPE_CHECKING:`` blocks too) to those rules, and fresh
interpreters show that each package imports first, alone, in any order, and pulls in
no more than its layer.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
OURS = ("ledger", "matching", "settlement")
# A fresh interpreter importing a few packages takes well under a second; this only
# turns a hang (an import-time deadlock, say) into a failure.
IMPORT_S_MAX = 60


# -- the static check -------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """Modules under ``layer`` may import, of ours, only what is under ``allowed`` (when
    given), and never what is under ``forbidden``."""

    name: str
    layer: str
    allowed: tuple[str, ...] = ()
    forbidden: tuple[str, ...] = ()
    outside: bool = False  # the rule applies to every module not under ``layer``


RULES = (
    Rule("ledger.protocol imports only ledger.protocol", "ledger.protocol", allowed=("ledger.protocol",)),
    Rule("ledger.logs imports only ledger.protocol and ledger.logs", "ledger.logs",
         allowed=("ledger.protocol", "ledger.logs")),
    Rule("matching never imports the reducer, replay, logs, app or settlement", "matching",
         forbidden=("ledger.ubscore", "ledger.rebuild", "ledger.logs", "ledger.app", "settlement")),
    Rule("matching imports only ledger.protocol and matching", "matching", allowed=("ledger.protocol", "matching")),
    Rule("ledger.ubscore never imports matching, logs, replay, settlement or app", "ledger.ubscore",
         forbidden=("matching", "ledger.logs", "ledger.rebuild", "settlement", "ledger.app")),
    Rule("ledger.ubscore imports only ledger.protocol and ledger.ubscore", "ledger.ubscore",
         allowed=("ledger.protocol", "ledger.ubscore")),
    Rule("settlement imports only protocol, logs, replay, ubscore, gctune, progress and settlement", "settlement",
         allowed=("ledger.protocol", "ledger.logs", "ledger.rebuild", "ledger.ubscore", "ledger.gctune",
                  "ledger.progress", "settlement")),
    Rule("nothing outside ledger.app imports ledger.app", "ledger.app", forbidden=("ledger.app",), outside=True),
    Rule("ledger.gctune imports only ledger.protocol", "ledger.gctune", allowed=("ledger.protocol", "ledger.gctune")),
    Rule("ledger.progress imports only ledger.protocol", "ledger.progress",
         allowed=("ledger.protocol", "ledger.progress")),
    Rule("ledger.strategies imports only ledger.protocol", "ledger.strategies",
         allowed=("ledger.protocol", "ledger.strategies")),
    Rule("ledger.rebuild imports only protocol, logs, ubscore, gctune and progress", "ledger.rebuild",
         allowed=("ledger.protocol", "ledger.logs", "ledger.ubscore", "ledger.gctune", "ledger.progress",
                  "ledger.rebuild")),
)
LAZY_PACKAGE_RULE = "ledger/__init__.py imports ours only lazily or under TYPE_CHECKING"


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module, relative imports resolved
    eager: bool  # runs when the module is imported (not in a function, not for type checkers only)


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def ours(name: str) -> bool:
    return any(under(name, top) for top in OURS)


def module_names(src: Path) -> dict[str, Path]:
    """Every module under src by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST, eager: bool) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import under node, with whether it runs when the module is imported."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [(node, eager)]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        eager = False
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        for child in node.body:
            found.extend(_import_nodes(child, False))
        for child in node.orelse:
            found.extend(_import_nodes(child, eager))
        return found
    for child in ast.iter_child_nodes(node):
        found.extend(_import_nodes(child, eager))
    return found


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The modules ``module`` imports; ``from package import name`` names the submodule
    when there is one, else the package."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []
    for node, eager in _import_nodes(ast.parse(path.read_text(), str(path)), True):
        if isinstance(node, ast.Import):
            found.extend(Import(module, alias.name, eager) for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            found.append(Import(module, submodule if submodule in modules else base, eager))
    return found


def violations(src: Path) -> list[str]:
    """Every broken rule, as 'module -> imported module (rule)'."""
    modules = module_names(src)
    problems: list[str] = []
    for module, path in modules.items():
        for imported in imports_of(module, path, modules):
            if not ours(imported.target):
                continue
            for rule in RULES:
                applies = not under(module, rule.layer) if rule.outside else under(module, rule.layer)
                if not applies:
                    continue
                if any(under(imported.target, f) for f in rule.forbidden) or (
                    rule.allowed and not any(under(imported.target, a) for a in rule.allowed)
                ):
                    problems.append(f"{module} -> {imported.target} ({rule.name})")
            if module == "ledger" and imported.eager:
                problems.append(f"{module} -> {imported.target} ({LAZY_PACKAGE_RULE})")
    return problems


def test_the_source_keeps_its_layers() -> None:
    modules = module_names(SRC)
    # The check is not vacuous: it sees every layer and the imports between them.
    assert {"ledger", "ledger.protocol", "ledger.logs", "ledger.ubscore", "ledger.app", "matching",
            "settlement"} <= set(modules)
    ours_imported = [i for m, p in modules.items() for i in imports_of(m, p, modules) if ours(i.target)]
    assert len(ours_imported) > 100
    problems = violations(SRC)
    assert problems == [], "layering violations:\n  " + "\n  ".join(problems)


def _tree(root: Path, files: dict[str, str]) -> Path:
    src = root / "src"
    for name, text in files.items():
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in ("ledger", "ledger/protocol", "ledger/logs", "ledger/app", "matching", "settlement"):
        init = src / package / "__init__.py"
        if not init.exists():
            init.parent.mkdir(parents=True, exist_ok=True)
            init.write_text("")
    return src


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"ledger/protocol/x.py": "import matching\n"},
         "ledger.protocol.x -> matching (ledger.protocol imports only ledger.protocol)"),
        ({"ledger/logs/y.py": "def later():\n    from ..app import cli\n", "ledger/app/cli.py": ""},
         "ledger.logs.y -> ledger.app.cli (nothing outside ledger.app imports ledger.app)"),
        ({"matching/z.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ledger.logs import base\n",
          "ledger/logs/base.py": ""},
         "matching.z -> ledger.logs.base (matching never imports the reducer, replay, logs, app or settlement)"),
        ({"settlement/w.py": "from ledger import app\n"},
         "settlement.w -> ledger.app (nothing outside ledger.app imports ledger.app)"),
        ({"ledger/__init__.py": "from ledger.protocol import codec\n", "ledger/protocol/codec.py": ""},
         f"ledger -> ledger.protocol.codec ({LAZY_PACKAGE_RULE})"),
    ],
    ids=["protocol-imports-matching", "relative-import-in-a-function", "type-checking-import", "from-package-import",
         "eager-package-import"],
)
def test_the_checker_catches_a_broken_layer(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    problems = violations(_tree(tmp_path, files))
    print("\n".join(problems))
    assert expected in problems


def test_the_checker_allows_lazy_and_type_checking_imports_in_the_package(tmp_path: Path) -> None:
    init = (
        "from typing import TYPE_CHECKING\n"
        "import importlib\n"
        "if TYPE_CHECKING:\n    from ledger.protocol import codec\n"
        "def __getattr__(name):\n    from ledger.protocol import codec\n    return importlib.import_module(name)\n"
    )
    assert violations(_tree(tmp_path, {"ledger/__init__.py": init, "ledger/protocol/codec.py": ""})) == []


# -- fresh interpreters -----------------------------------------------------------------


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """Run code in a fresh interpreter that imports this checkout's packages."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=IMPORT_S_MAX)


TOP_LEVEL = ("ledger", "matching", "settlement")
SUB_PACKAGES = ("ledger.protocol", "ledger.logs", "ledger.ubscore", "ledger.rebuild", "ledger.app")


@pytest.mark.parametrize("order", list(itertools.permutations(TOP_LEVEL)), ids="-".join)
def test_the_top_level_packages_import_in_any_order(order: tuple[str, ...]) -> None:
    result = _python("; ".join(f"import {name}" for name in order))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("first", SUB_PACKAGES)
def test_each_layer_imports_first_alone_and_then_the_rest(first: str) -> None:
    rest = [name for name in (*TOP_LEVEL, *SUB_PACKAGES) if name != first]
    result = _python(f"import {first}; " + "; ".join(f"import {name}" for name in rest))
    assert result.returncode == 0, result.stderr


def _modules_after(statement: str) -> set[str]:
    result = _python(f"import json, sys\n{statement}\nprint(json.dumps([sys.modules['ledger'].__file__, "
                     "sorted(sys.modules)]))")
    assert result.returncode == 0, result.stderr
    ledger_file, modules = json.loads(result.stdout)
    assert Path(ledger_file).resolve().is_relative_to(SRC), f"imported {ledger_file}, not this checkout"
    return set(modules)


@pytest.mark.parametrize(
    ("statement", "absent"),
    [
        ("import ledger.protocol",
         ("ledger.ubscore", "ledger.logs", "ledger.rebuild", "matching", "settlement", "ledger.app", "confluent_kafka",
          "cassandra")),
        ("import matching",
         ("ledger.ubscore", "ledger.logs", "ledger.rebuild", "ledger.app", "settlement", "confluent_kafka",
          "cassandra")),
    ],
    ids=["ledger.protocol", "matching"],
)
def test_a_layer_imports_nothing_above_it(statement: str, absent: tuple[str, ...]) -> None:
    modules = _modules_after(statement)
    assert not [m for m in modules if any(under(m, name) for name in absent)]


def test_the_lazy_replay_export_is_the_function_whatever_was_imported_before() -> None:
    result = _python("import ledger.rebuild\nfrom ledger import replay\nassert callable(replay), replay")
    assert result.returncode == 0, result.stderr


def test_no_lazily_exported_name_is_also_a_submodule_of_ledger() -> None:
    # Importing a submodule sets the package attribute of its name, which would shadow
    # a lazy export of the same name for every later ``from ledger import NAME``.
    import pkgutil

    import ledger

    submodules = {info.name for info in pkgutil.iter_modules(ledger.__path__)}
    assert not submodules & set(ledger.__all__)
