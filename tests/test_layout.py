"""The style rules that can be checked, checked: where SQL lives, who owns what, docs.

These read the source with `ast` rather than importing tricks, so a newcomer who
puts a query in the wrong module, or a command without help, hears it from a test.
"""

from __future__ import annotations

import ast
import functools
import importlib
import re
from pathlib import Path

import pytest
import typer.core
import typer.main

import chronos
from chronos import states
from chronos.cli import app

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "chronos"

#: Modules that may hold SQL: the schema, the engine, the migrations runner, the
#: owner of each lifecycle step, and the read-only tools.
ALLOWED_SQL = {
    "schema",
    "db",
    "migrate",
    "ingestion",
    "buffer",
    "inspection",
    "worker",
    "storage",
    "check",
    "replay",
    "purge",
}

#: `chronos bench` times bare sqlite3 as its baseline, outside Chronos on purpose.
BARE_DRIVER_BASELINE = {"bench"}

#: What any other module (except cli) may take from SQLAlchemy: type names for
#: annotations, never a way to build or run SQL.
TYPE_ONLY = {"sqlalchemy.engine": {"Engine", "Connection"}}

#: The owners in `states.TRANSITIONS`, named as the constants of `states.py`.
OWNER_CONSTANTS = {"INGESTION": states.INGESTION, "BUFFER": states.BUFFER, "WORKER": states.WORKER}


@functools.cache
def _modules() -> dict[str, ast.Module]:
    found = {
        path.stem: ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for path in sorted(PACKAGE.glob("*.py"))
    }
    assert {"cli", "db", "schema", "states"} <= set(found)
    return found


def _imports(tree: ast.Module) -> list[tuple[str, set[str]]]:
    """Every import in the module, at any depth: (module, names taken from it)."""
    found: list[tuple[str, set[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, set()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, {alias.name for alias in node.names}))
    return found


def _is_sqlalchemy(module: str) -> bool:
    return module == "sqlalchemy" or module.startswith("sqlalchemy.")


def test_only_the_sql_modules_import_sqlalchemy_beyond_type_names() -> None:
    offenders = []
    for name, tree in _modules().items():
        if name in ALLOWED_SQL:
            continue
        for module, names in _imports(tree):
            if not _is_sqlalchemy(module):
                continue
            if name != "cli" and names and names <= TYPE_ONLY.get(module, set()):
                continue
            offenders.append(f"chronos/{name}.py imports {module} {sorted(names)}")
    assert offenders == []


def test_cli_never_imports_sqlalchemy() -> None:
    imported = [module for module, _ in _imports(_modules()["cli"])]
    assert [m for m in imported if _is_sqlalchemy(m)] == []


def test_only_db_touches_the_database_driver() -> None:
    offenders = [
        f"chronos/{name}.py imports {module}"
        for name, tree in _modules().items()
        for module, _ in _imports(tree)
        if module.split(".")[0] in {"sqlite3", "psycopg", "psycopg2"}
        and name not in {"db", *BARE_DRIVER_BASELINE}
    ]
    assert offenders == []


def test_only_the_sql_modules_run_statements() -> None:
    offenders = []
    for name, tree in _modules().items():
        if name in ALLOWED_SQL | BARE_DRIVER_BASELINE:
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"execute", "exec_driver_sql"}
            ):
                offenders.append(f"chronos/{name}.py:{node.lineno} calls .{node.func.attr}()")
    assert offenders == []


def test_only_migrate_drives_alembic() -> None:
    offenders = [
        f"chronos/{name}.py imports {module}"
        for name, tree in _modules().items()
        for module, _ in _imports(tree)
        if (module == "alembic" or module.startswith("alembic.")) and name != "migrate"
    ]
    assert offenders == []


def test_each_transition_is_made_only_by_the_module_that_owns_it() -> None:
    offenders = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            for keyword in node.keywords:
                if keyword.arg != "owner":
                    continue
                value = keyword.value
                ident = value.attr if isinstance(value, ast.Attribute) else None
                ident = value.id if isinstance(value, ast.Name) else ident
                if isinstance(value, ast.Constant):
                    owner = value.value
                elif ident in OWNER_CONSTANTS:
                    owner = OWNER_CONSTANTS[ident]
                else:
                    continue  # a parameter passed along, as in db.transition itself
                if owner != name:
                    offenders.append(f"chronos/{name}.py:{node.lineno} acts as {owner!r}")
    assert offenders == []


@pytest.mark.parametrize(
    "path",
    [*sorted(PACKAGE.glob("*.py")), *sorted((ROOT / "migrations").rglob("*.py"))],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_module_starts_with_future_annotations(path: Path) -> None:
    body = ast.parse(path.read_text(encoding="utf-8")).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    assert body, f"{path} is empty"
    first = body[0]
    assert isinstance(first, ast.ImportFrom)
    assert first.module == "__future__"
    assert [alias.name for alias in first.names] == ["annotations"]


def test_every_module_has_a_docstring() -> None:
    missing = [name for name, tree in _modules().items() if not ast.get_docstring(tree)]
    assert missing == []


def test_every_public_name_is_importable_from_the_package() -> None:
    assert len(chronos.__all__) == len(set(chronos.__all__))
    assert {"Chronos", "RetryableError", "State", "TerminalError"} <= set(chronos.__all__)
    fresh = importlib.import_module("chronos")
    for name in chronos.__all__:
        assert getattr(fresh, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from chronos import *", namespace)
    assert set(chronos.__all__) <= set(namespace)


def _commands() -> dict[str, str]:
    """Command name -> its help text, as Typer shows it."""
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    found = {name: (command.help or "").strip() for name, command in group.commands.items()}
    assert {"migrate", "ingest", "inspect", "stats"} <= set(found)
    return found


def test_every_command_has_a_help_text_with_an_example() -> None:
    for name, help_text in _commands().items():
        assert help_text, f"chronos {name} has no help text"
        summary = help_text.splitlines()[0]
        assert summary.strip(), f"chronos {name} has no one-line summary"
        example = rf"Example.*\bchronos\b[^\n]*\b{re.escape(name)}\b"
        assert re.search(example, help_text, re.DOTALL), f"chronos {name} shows no example"


def test_every_command_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [
        name
        for name in _commands()
        if not re.search(rf"\bchronos\b[^\n`]*?\s{re.escape(name)}\b", readme)
    ]
    assert missing == []


def test_only_known_owners_appear_in_the_transition_table() -> None:
    assert set(states.TRANSITIONS.values()) <= {states.INGESTION, states.BUFFER, states.WORKER}
    for owner in set(states.TRANSITIONS.values()):
        assert (PACKAGE / f"{owner}.py").exists(), f"no module for owner {owner}"


def test_terminal_states_have_no_way_out() -> None:
    for source, target in states.TRANSITIONS:
        assert source not in states.TERMINAL, f"{source} -> {target} leaves a terminal state"
        assert source != target


def test_every_state_is_reachable_and_every_live_state_can_move_on() -> None:
    reached = {states.INITIAL}
    grew = True
    while grew:
        grew = False
        for source, target in states.TRANSITIONS:
            if source in reached and target not in reached:
                reached.add(target)
                grew = True
    assert reached == set(states.State)
    assert all(target != states.INITIAL for _, target in states.TRANSITIONS)
    for state in states.State:
        if state not in states.TERMINAL:
            assert any(source == state for source, _ in states.TRANSITIONS), state


def test_every_live_state_can_still_end_terminal() -> None:
    for state in states.State:
        seen, frontier = {state}, [state]
        while frontier:
            here = frontier.pop()
            for source, target in states.TRANSITIONS:
                if source == here and target not in seen:
                    seen.add(target)
                    frontier.append(target)
        assert seen & states.TERMINAL, f"{state} can never end terminal"


def test_claimable_states_are_claimed_by_the_worker() -> None:
    assert states.CLAIMABLE
    for state in states.CLAIMABLE:
        assert states.TRANSITIONS.get((state, states.State.PROCESSING)) == states.WORKER
