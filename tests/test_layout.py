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
    gradio_users = {module_name(path) for path in PACKAGE.rglob("*.py")
                    if any(name.split(".")[0] == "gradio" for name in imports_of(path))}
    assert gradio_users == {"foresight.page"}, "gradio stays in app.py and the page's handlers"
    page = imports_of(PACKAGE / "page.py")
    assert not {name for name in page if name.split(".")[0] in ("transformers", "diffusers", "torch")}


# The house's rooms (docs/ARCHITECTURE.md), and the rooms each may import from: every import points
# down the list, and a room imports only what its work needs.
ROOMS = {
    "page": {"page", "gpu_queue"},
    "tools": {"__main__", "bench", "syncs", "check", "evaluate", "data", "train"},
    "serving": {"serving"},
    "session": {"session", "storage"},
    "profiles": {"profiles", "profiles.tiny", "profiles.random_full"},
    "run": {"pipeline"},
    "jobs": {"jobs"},
    "runtime": {"runtime", "health"},
    "story": {"story"},
    "stages": {"vlm", "video", "passes", "scheduling", "graphs"},
    "models": {"models", "ltx_checkpoint", "bridge", "scheduler", "upscaler"},
    "base": {"config", "inputs", "events", "media", "trace"},
}
MAY_IMPORT = {
    "page": {"page", "session", "runtime", "story", "base"},
    "tools": {"tools", "profiles", "run", "story", "stages", "models", "base"},
    "serving": {"profiles", "run", "models", "base"},
    "session": {"session", "story", "base"},
    "profiles": {"profiles", "models", "base"},
    "run": {"jobs", "runtime", "story", "stages", "base"},
    "jobs": {"runtime", "story", "stages", "base"},
    "runtime": {"runtime", "base"},
    "story": {"base"},
    "stages": {"stages", "base"},
    "models": {"models", "base"},
    "base": {"base"},
}


def room_of(module: str) -> str:
    short = module.removeprefix("foresight.")
    return next(room for room, members in ROOMS.items() if short in members)


def test_each_room_imports_only_from_the_rooms_it_may():
    graph = package_graph()
    assert {room_of(module) for module in graph if module != "foresight"} == set(ROOMS), "every module has its room"
    crossing = {(module, dep) for module, deps in graph.items() if module != "foresight"
                for dep in deps if dep != "foresight" and room_of(dep) not in MAY_IMPORT[room_of(module)]}
    assert crossing == set()
    app = {dep for dep in imports_of(ROOT / "app.py") if dep.startswith("foresight.") and dep.count(".") == 1}
    assert {room_of(dep) for dep in app} <= {"page", "serving", "session", "base"}, "app.py: layout and wiring"
