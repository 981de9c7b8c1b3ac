"""No import cycles among hpctrain modules, imports inside functions included.

A cycle hidden behind a lazy import still means two modules that cannot be understood (or
loaded as ``__main__``) apart; the batch script's ``python -m`` entry once loaded a module
twice because of one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import hpctrain

PKG = Path(hpctrain.__file__).parent


def _module_files() -> dict[str, Path]:
    out = {}
    roots = [(PKG, "hpctrain")]
    import hpctrain.kernels as kernels  # installed from kernels/ through package_dir

    kpath = Path(kernels.__file__).parent
    if kpath.parent != PKG:
        roots.append((kpath, "hpctrain.kernels"))
    for root, prefix in roots:
        for f in root.rglob("*.py"):
            rel = f.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = f
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The hpctrain module ``name`` refers to (a name inside a module maps to that module)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(mod: str, path: Path, modules: dict[str, Path]) -> set[str]:
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names = [f"{stem}.{a.name}" for a in node.names] + [stem]
        else:
            continue
        for n in names:
            target = _resolve(n, modules)
            # a package's own __init__ reached through its submodule's name is not an edge to itself
            if target and target != mod:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _module_files()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    # "from pkg import sub" names the package too; importing a submodule always runs its
    # package's __init__, which is not a dependency of the package on the importer
    for m, deps in graph.items():
        deps -= {d for d in deps if m.startswith(d + ".")}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_finder_sees_a_cycle_through_a_lazy_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]


def test_graph_counts_imports_inside_functions(tmp_path):
    modules = {"hpctrain.x": tmp_path / "x.py", "hpctrain.y": tmp_path / "y.py"}
    modules["hpctrain.x"].write_text("def f():\n    from hpctrain.y import g\n    return g\n")
    assert _imports("hpctrain.x", modules["hpctrain.x"], modules) == {"hpctrain.y"}


def test_graph_sees_real_edges():
    graph = import_graph()
    assert "hpctrain.rundir" in graph["hpctrain.slurm.status"]
    assert "hpctrain.slurm.submit" in graph["hpctrain.slurm.after_step"]


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    graph = import_graph()
    lines = []
    for comp in cycles:
        edges = [f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp]
        lines.append(" <-> ".join(comp) + "\n    " + "\n    ".join(edges))
    assert not cycles, "import cycles among hpctrain modules (imports inside functions count):\n" + "\n".join(lines)
