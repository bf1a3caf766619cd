"""The package's imports respect its layers: no import circles, no upward imports.

Layers, top to bottom: errors, codecs, transforms, solvers, models, kernels, eval, cli (and `python -m pvq`, which only calls it)
(imports inside functions count).
"""

import ast
from pathlib import Path

import pvq

LAYER = {"errors": 0, "codecs": 1, "transforms": 2, "solvers": 3, "models": 4, "kernels": 5, "eval": 6, "cli": 7, "__main__": 7}
ROOT = Path(pvq.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT).with_suffix("").parts
        out[".".join(("pvq",) + parts).removesuffix(".__init__")] = f
    return out


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name, f in mods.items():
        pkg = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                if t in mods and t != name:
                    found.setdefault(name, set()).add(t)
    return found


def _layer(name: str):
    parts = name.split(".")
    return LAYER.get(parts[1]) if len(parts) > 1 else None


def test_no_upward_imports():
    graph = _edges(_modules())
    ups = sorted(f"{a} -> {b}" for a, bs in graph.items() for b in bs
                 if _layer(a) is not None and _layer(b) is not None and _layer(b) > _layer(a))
    assert ups == []


def test_no_import_circles():
    graph = _edges(_modules())
    # a package __init__ re-exporting its own modules is not a circle
    g = {a: {b for b in bs if not b.startswith(a + ".") and not a.startswith(b + ".")} for a, bs in graph.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            v = todo.pop()
            for w in g.get(v, ()):
                if w == goal:
                    return True
                if w not in seen:
                    seen.add(w)
                    todo.append(w)
        return False

    circles = sorted({tuple(sorted((a, b))) for a, bs in g.items() for b in bs if reaches(b, a)})
    assert circles == []


def test_every_module_has_a_layer():
    unknown = sorted(n for n in _modules() if n.count(".") >= 1 and _layer(n) is None
                     and n.split(".")[1] not in ("assets",))
    assert unknown == []
