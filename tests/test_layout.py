"""The package's shape: every import points down (no circles, lazy imports included), and the page
stays a page."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "foresight"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def package_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: {dep for dep in imports_of(path) if dep in modules and dep != name}
            for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, groups, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for dep in graph[node]:
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def test_no_import_circles_in_the_package():
    graph = package_graph()
    assert len(graph) > 15
    assert circles(graph) == []


def test_the_circle_finder_finds_circles():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_settings_know_nothing_of_profiles_and_loaders_nothing_of_the_callers():
    graph = package_graph()
    assert graph["foresight.config"] == set()
    assert not {dep for dep in graph["foresight.models"] if dep.startswith("foresight.profiles")}
    for tool in ("foresight.train", "foresight.evaluate", "foresight.data"):
        assert not {dep for dep in graph[tool] if dep.startswith("foresight.profiles")}, tool


def test_app_is_only_the_page():
    direct = imports_of(ROOT / "app.py")
    assert not {name for name in direct if name.split(".")[0] in ("transformers", "diffusers", "torch")}
    assert not {name for name in direct if name.startswith("foresight.profiles")}
    assert not {name for name in graph_of_package_only() if name.split(".")[0] == "gradio"}


def graph_of_package_only() -> set[str]:
    """Every module the package itself imports: gradio stays in app.py."""
    return set().union(*(imports_of(path) for path in PACKAGE.rglob("*.py")))
