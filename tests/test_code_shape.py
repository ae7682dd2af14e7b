"""The code's shape, read from its imports: no cycle between files or between folders, and
few function-local imports of mtf's own modules, each saying why it is deferred."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("mtf", "tasks")
MAX_LOCAL_IMPORTS = 20


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _targets(node: ast.AST, package: str) -> list[str]:
    """The project modules an import statement loads (a name imported from a package is
    the submodule when there is one)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                            + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                 for a in node.names]
    else:
        return []
    return [n for n in names if n.split(".")[0] in PACKAGES and n in MODULES]


def _imports() -> dict[str, list[tuple[str, ast.AST, bool]]]:
    """module -> [(imported module, statement, inside a function)]."""
    out = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        local = {id(n) for f in ast.walk(tree)
                 if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f)}
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        out[name] = [(t, node, id(node) in local) for node in ast.walk(tree)
                     for t in _targets(node, package) if t != name]
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _folder(module: str) -> str:
    """A subfolder (mtf/data, mtf/model, mtf/convert, tasks) stands as one node; a module
    of mtf/ itself stands for itself (the top folder holds every layer, launch to
    checkpoint, so it cannot be one node of a one-way graph)."""
    folder = str(MODULES[module].parent.relative_to(REPO))
    return module if folder == "mtf" else folder


def test_no_import_cycle_between_files():
    graph = {m: {t for t, _, _ in edges} for m, edges in _imports().items()}
    # a package's __init__ re-exporting its own modules is not a cycle between files
    for m in graph:
        graph[m] = {t for t in graph[m] if not (MODULES[m].name == "__init__.py"
                                                and t.startswith(m + "."))}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_no_import_cycle_between_folders():
    graph: dict[str, set[str]] = {}
    for m, edges in _imports().items():
        for t, _, _ in edges:
            if _folder(m) != _folder(t):
                graph.setdefault(_folder(m), set()).add(_folder(t))
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_few_function_local_imports_each_with_its_reason():
    local = []
    for m, edges in _imports().items():
        lines = MODULES[m].read_text().splitlines()
        seen = set()
        for _, node, inside in edges:
            if inside and id(node) not in seen:
                seen.add(id(node))
                line = lines[node.lineno - 1]
                local.append((f"{MODULES[m].relative_to(REPO)}:{node.lineno}", line))
    assert len(local) <= MAX_LOCAL_IMPORTS, "\n".join(w for w, _ in local)
    unexplained = [w for w, line in local if "#" not in line]
    assert not unexplained, f"function-local imports without a reason: {unexplained}"


# Registration-time queues, filled while modules import, never by a run.
REGISTRATION_STATE = {
    "mtf.data.seqio_tasks._PENDING_MIXTURES":
        "mixtures that name tasks of a module imported later; `import tasks` drains it",
}
_MUTATORS = {"append", "add", "update", "setdefault", "pop", "popitem", "clear", "extend",
             "remove", "discard", "insert", "skip"}


def test_no_module_level_mutable_run_state():
    """No `global` statement, and no module-level container or object that code mutates:
    run state lives in the objects a run makes (a SkipReport, a LogWindow, a task source)."""
    found = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        found += [f"{name}:{n.lineno} global {', '.join(n.names)}" for n in ast.walk(tree)
                  if isinstance(n, ast.Global)]
        module_level = set()
        for node in tree.body:
            targets = (node.targets if isinstance(node, ast.Assign) else
                       [node.target] if isinstance(node, ast.AnnAssign) and node.value else [])
            value = getattr(node, "value", None)
            mutable = isinstance(value, (ast.Dict, ast.List, ast.Set, ast.DictComp,
                                         ast.ListComp, ast.SetComp, ast.Call))
            module_level |= {t.id for t in targets if isinstance(t, ast.Name) and mutable}
        for node in ast.walk(tree):
            target = None
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
                for t in getattr(node, "targets", None) or [node.target]:
                    if isinstance(t, (ast.Subscript, ast.Attribute)) and isinstance(
                            t.value, ast.Name):
                        target = t.value.id
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr in _MUTATORS and isinstance(node.func.value, ast.Name)):
                target = node.func.value.id
            if target in module_level and f"{name}.{target}" not in REGISTRATION_STATE:
                found.append(f"{name}:{node.lineno} mutates module-level {target}")
    assert not found, "\n".join(found)


def test_the_readme_layout_names_every_module():
    """README's "How the code is laid out" matches the code: each module of mtf/ is named,
    a subfolder's modules on its folder's lines."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## How the code is laid out"):]
    block = section[section.index("```\n") + 4:section.index("\n```", section.index("```\n"))]
    folders: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        if not line.startswith(" "):
            current = line.split()[0] if line.split() else None
        if current and current.endswith("/"):
            folders[current] = folders.get(current, "") + " " + line
    missing = []
    for path in MODULES.values():
        parts = path.relative_to(REPO).parts
        if parts[0] != "mtf" or path.name == "__init__.py":
            continue
        if len(parts) == 2:
            if f"mtf/{path.name}" not in block:
                missing.append(str(path.relative_to(REPO)))
        elif path.stem not in folders.get(f"mtf/{parts[1]}/", "").replace(".py", " ").replace(
                ",", " ").replace("(", " ").split():
            missing.append(str(path.relative_to(REPO)))
    assert not missing, f"README's layout does not name {missing}"
