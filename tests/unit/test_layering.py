"""The one-way rule of the layout (docs/architecture.md), held by reading
every import in the code, local and TYPE_CHECKING ones included: an image
travels device → frames (drivers) → acquire → DICOM object (dicom) → queue →
send → PACS, with the RIS, ops, the UI and the app on the side; nothing low
on that path may know what sits above it."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.process import REPO

# package → packages it must never import (prefix match on dotted names).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "drivers": ("gateway",),
    "gateway.dicom": (
        "drivers",
        "gateway.acquire",
        "gateway.queue",
        "gateway.net",
        "gateway.send",
        "gateway.ris",
        "gateway.ops",
        "gateway.ui",
        "gateway.app",
    ),
    "gateway.queue": (
        "drivers",
        "gateway.acquire",
        "gateway.net",
        "gateway.send",
        "gateway.ris",
        "gateway.ops",
        "gateway.ui",
        "gateway.app",
    ),
    "gateway.net": (
        "drivers",
        "gateway.acquire",
        "gateway.queue",
        "gateway.send",
        "gateway.ris",
        "gateway.ops",
        "gateway.ui",
        "gateway.app",
    ),
    "gateway.send": (
        "drivers",
        "gateway.acquire",
        "gateway.ris",
        "gateway.ops",
        "gateway.ui",
        "gateway.app",
    ),
    "gateway.ris": (
        "drivers",
        "gateway.acquire",
        "gateway.send",
        "gateway.ops",
        "gateway.ui",
        "gateway.app",
    ),
    "gateway.acquire": ("gateway.send", "gateway.ui", "gateway.app"),
    "gateway.ops": ("gateway.acquire", "gateway.ui", "gateway.app"),
    "gateway.ui": ("gateway.app",),
    # The package's face: the configuration model and where things are.
    "gateway.config": tuple(
        f"gateway.{p}" for p in ("acquire", "queue", "net", "send", "ris", "ops", "ui", "app")
    ),
    "gateway.paths": ("gateway.",),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    package = _module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            # `from gateway import clock` names a module too
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return found


def _rule_for(module: str) -> tuple[str, tuple[str, ...]] | None:
    best = None
    for owner, banned in FORBIDDEN.items():
        inside = module == owner or module.startswith(owner + ".")
        if inside and (best is None or len(owner) > len(best[0])):
            best = (owner, banned)
    return best


def _matches(name: str, banned: str) -> bool:
    return name == banned.rstrip(".") or name.startswith(banned.rstrip(".") + ".")


def test_no_import_breaks_the_one_way_rule() -> None:
    broken = []
    for root in ("gateway", "drivers"):
        for path in sorted((REPO / root).rglob("*.py")):
            module = _module_name(path)
            rule = _rule_for(module)
            if rule is None:
                continue
            owner, banned = rule
            for line, name in _imports(path):
                if any(_matches(name, b) for b in banned):
                    broken.append(f"{path.relative_to(REPO)}:{line}: {owner} imports {name}")
    assert not broken, "\n".join(sorted(set(broken)))


def test_the_rule_would_catch_a_breach(tmp_path: Path) -> None:
    """The checker itself: a queue module importing the network is caught."""
    sample = REPO / "gateway" / "queue" / "db.py"
    tree_imports = _imports(sample)
    assert all(not _matches(n, "gateway.net") for _, n in tree_imports)
    rule = _rule_for("gateway.queue.db")
    assert rule is not None and any(_matches("gateway.net.ul", b) for b in rule[1])
    assert _rule_for("gateway.send.forwarder") == ("gateway.send", FORBIDDEN["gateway.send"])


def test_the_top_of_the_package_is_only_its_face() -> None:
    """Everything else hangs off the path of an image, in its folder."""
    top = sorted(p.name for p in (REPO / "gateway").glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "config.py", "paths.py"], top
