"""The direction of imports between the packages (docs/development.md, "The layout"), read
from the source with ast: every import counts, those under TYPE_CHECKING and inside
functions too, unless a rule says otherwise."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAEMON = ROOT / "event_processor"
# What waits or talks to AWS: the contract is pure and synchronous.
WAITING = frozenset({"asyncio", "aiobotocore", "boto3", "botocore"})
# All the contract may import of the daemon besides itself.
CONTRACT_MAY_IMPORT = ("event_processor.constants", "event_processor.exitcodes")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # what it imports, dotted and absolute (`from a import b` is a.b)
    line: int
    in_function: bool  # inside a def: run when called, not when the module is imported


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def scan(source: str, module: str, *, is_package: bool = False) -> list[Import]:
    """The imports of `source`, the text of `module`."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(
                    Import(module, alias.name, child.lineno, in_function) for alias in child.names
                )
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.rsplit(".", child.level - 1)[0]
                    base = f"{anchor}.{base}" if base else anchor
                found.extend(
                    Import(module, f"{base}.{alias.name}", child.lineno, in_function)
                    for alias in child.names
                )
            visit(
                child,
                in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef),
            )

    visit(ast.parse(source), in_function=False)
    return found


def imports_of(path: Path) -> list[Import]:
    return scan(path.read_text(), module_name(path), is_package=path.name == "__init__.py")


def imports_under(folder: Path) -> list[Import]:
    return [i for path in sorted(folder.rglob("*.py")) for i in imports_of(path)]


def within(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def test_the_scanner_resolves_relative_imports_and_sees_inside_functions() -> None:
    """A relative import resolves against its package; one inside a def is marked so."""
    source = "from . import rules\nfrom ..pipeline import sink\ndef f():\n    import devworld\n"
    found = scan(source, "event_processor.contract.probe")
    assert [(i.target, i.in_function) for i in found] == [
        ("event_processor.contract.rules", False),
        ("event_processor.pipeline.sink", False),
        ("devworld", True),
    ]


@pytest.mark.parametrize("path", sorted((DAEMON / "contract").glob("*.py")), ids=lambda p: p.name)
def test_the_contract_imports_nothing_that_waits_and_nothing_above_it(path: Path) -> None:
    """contract/ imports no asyncio or AWS client, and of the daemon only constants, exit
    codes and itself: the daemon, the tools, the fleet and the tests share it as it is."""
    wrong = [
        i
        for i in imports_of(path)
        if i.target.partition(".")[0] in WAITING
        or (
            within(i.target, "event_processor")
            and not within(i.target, "event_processor.contract")
            and not any(within(i.target, allowed) for allowed in CONTRACT_MAY_IMPORT)
        )
    ]
    assert wrong == []


def test_the_tools_never_import_the_pipeline() -> None:
    """tools/ reads what the daemon writes through contract/ and auth/, never pipeline/."""
    wrong = [
        i for i in imports_under(DAEMON / "tools") if within(i.target, "event_processor.pipeline")
    ]
    assert wrong == []


def test_the_daemon_never_imports_the_dev_world_at_module_level() -> None:
    """Only a function may import devworld (cli's `demo`), so `run` never loads it."""
    found = [i for i in imports_under(DAEMON) if within(i.target, "devworld")]
    assert [i for i in found if not i.in_function] == []
    assert {i.module for i in found} <= {"event_processor.cli"}
