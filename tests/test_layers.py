"""The daemon's modules depend on each other one way only (docs/architecture.md has the map).

Every module of the coordd and coordctl packages is parsed (not imported), and every `import` and
`from ... import` in it, function-local lazy imports included, is resolved to a module of the coordd
package. The test fails on an import cycle (naming it), on an import that points the wrong way
between layers, on a coordd module missing from the layer table, and on any coordctl module that
imports coordd: the client package stands alone.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The layers, bottom up, by module (a package name covers the modules under it). A module may import
# the modules of its own layer and of the layers ALLOWED lists for it; coordctl may always be imported.
LAYERS = {
    # and leaf utilities: nothing of coordd below them
    "model": ["coordd", "coordd.model", "coordd.lockfile", "coordd.turns"],
    "config": ["coordd.config", "coordd.gui", "coordd.gui.config"],
    "store": [
        "coordd.store",
        "coordd.schema",
        "coordd.writer",
        "coordd.checkpointer",
        "coordd.reads",
        "coordd.retention",
        "coordd.fts",
    ],
    "transports": ["coordd.transports", "coordd.gui.owner", "coordd.gui.clipboard", "coordd.gui.transport"],
    "hooks": ["coordd.hooks"],
    "delivery": ["coordd.delivery", "coordd.bounces", "coordd.inbox_retention"],
    "handlers": [
        "coordd.handlers",
        "coordd.validation",
        "coordd.admission",
        "coordd.sending",
        "coordd.groups",
        "coordd.queries",
        "coordd.retry_cancel",
        "coordd.inbox_requests",
        "coordd.pull",
        "coordd.pauses",
        "coordd.gui.requests",
    ],
    # [cluster]: forwarding through NATS JetStream; imported by the daemon alone, and only with [cluster]
    "cluster": [
        "coordd.cluster",
        "coordd.cluster.link",
        "coordd.cluster.directory",
        "coordd.cluster.forwarding",
        "coordd.cluster.node",
    ],
    "observability": ["coordd.metrics", "coordd.events", "coordd.observer", "coordd.series"],
    "server": ["coordd.server", "coordd.dashboard_server"],
    "system": ["coordd.listener", "coordd.systemd", "coordd.units"],
    "setup": ["coordd.discover", "coordd.starter"],  # coordd init: a starting config, the agents found in tmux
    "daemon": ["coordd.daemon", "coordd.reload", "coordd.cli", "coordd.entry", "coordd.__main__"],
}
ALLOWED = {
    "model": set(),
    "config": {"model"},
    "store": {"model", "config"},
    "transports": {"model", "config"},
    "hooks": {"model", "config"},
    "delivery": {"model", "config", "store", "transports", "hooks"},
    "handlers": {"model", "config", "store", "transports", "hooks", "delivery"},
    "cluster": {"model", "config", "store", "transports", "hooks", "delivery"},
    "observability": {"model", "config", "hooks"},
    "server": {"model", "config", "hooks", "handlers", "observability"},
    "system": {"model"},
    "setup": {"model", "config"},
    "daemon": set(LAYERS),
}


def module_files(package: str) -> dict[str, Path]:
    """Every module of a package, by dotted name (a package by its own name, for its __init__.py)."""
    found = {}
    for path in sorted((REPO / package).rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """The modules of `known` that the module `name` imports, anywhere in it, with the line of each import."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            # `from a import b`: the module a.b when there is one, else the attribute b of a
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a name: its longest known module
                target = target.rpartition(".")[0]
            if target and target != name and (target, node.lineno) not in found:
                found.append((target, node.lineno))
    return found


def layer_of(module: str) -> str | None:
    best = None
    for layer, names in LAYERS.items():
        for n in names:
            covers = module == n or (n != "coordd" and module.startswith(n + "."))  # the package alone is "model"
            if covers and (best is None or len(n) > len(best[1])):
                best = (layer, n)
    return best[0] if best else None


def graph() -> tuple[dict[str, list[tuple[str, int]]], dict[str, Path]]:
    files = module_files("coordd")
    known = set(files)
    return {m: imports(m, p, known) for m, p in files.items()}, files


def find_cycles(edges: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules that has one (Tarjan, then a path)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _ in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    cycles = []
    for group in groups:
        members = set(group)
        start = min(group)
        path, seen = [start], {start}
        while True:  # walk within the group until the walk closes on itself
            nxt = next(w for w, _ in edges[path[-1]] if w in members)
            if nxt in seen:
                cycles.append([*path[path.index(nxt) :], nxt])
                break
            path.append(nxt)
            seen.add(nxt)
    return cycles


def test_no_import_cycles():
    edges, _ = graph()
    cycles = find_cycles(edges)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_every_module_has_a_layer():
    _, files = graph()
    missing = [m for m in files if layer_of(m) is None]
    assert not missing, f"modules missing from tests/test_layers.py LAYERS: {missing}"


def test_layers_point_one_way():
    edges, files = graph()
    wrong = []
    for module, targets in edges.items():
        mine = layer_of(module)
        for target, line in targets:
            theirs = layer_of(target)
            if mine and theirs and theirs != mine and theirs not in ALLOWED[mine]:
                wrong.append(f"{files[module].relative_to(REPO)}:{line}: {module} ({mine}) imports {target} ({theirs})")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_coordctl_imports_nothing_of_coordd():
    files = module_files("coordctl")
    known = set(module_files("coordd")) | set(files)
    wrong = [
        f"{path.relative_to(REPO)}:{line}: {name} imports {target}"
        for name, path in files.items()
        for target, line in imports(name, path, known)
        if target == "coordd" or target.startswith("coordd.")
    ]
    assert not wrong, "coordctl must not import coordd:\n" + "\n".join(wrong)


def test_the_walker_sees_lazy_and_relative_imports(tmp_path):
    """The resolver itself: an import inside a function counts, a relative one resolves, an attribute is not
    a module."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg.b import thing\n")
    (pkg / "b.py").write_text("from . import c\nfrom .a import f\n")
    (pkg / "c.py").write_text("import os\n")
    known = {"pkg", "pkg.a", "pkg.b", "pkg.c"}
    assert imports("pkg.a", pkg / "a.py", known) == [("pkg.b", 2)]
    assert imports("pkg.b", pkg / "b.py", known) == [("pkg.c", 1), ("pkg.a", 2)]
    assert find_cycles({"pkg.a": [("pkg.b", 2)], "pkg.b": [("pkg.a", 2)], "pkg.c": []}) == [["pkg.a", "pkg.b", "pkg.a"]]
