#!/usr/bin/env python3
"""Checks that the top-level modules of src/ import one way (docs/ARCHITECTURE.md).

Every `crate::<module>` path outside comments and `#[cfg(test)]` code is an import of
<module>. A module may import modules of lower layers only. Exits 1, naming each import
cycle and each import that points up or sideways; prints the layers when all is well.

    python3 .ci/layers.py [SRC_DIR]
"""
import os
import re
import sys

# Lowest first. A module may import only modules of a lower layer; modules of one layer
# do not import each other. Keep in step with docs/ARCHITECTURE.md.
LAYERS = [
    ["domain", "clock", "outbound", "lifecycle", "metrics"],
    ["crypto"],
    ["config"],
    ["telemetry", "store"],
    ["databricks"],
    ["agent"],
    ["slack"],
    ["services"],
    ["linking"],
    ["jobs"],
    ["intake"],
    ["http"],
    ["startup"],
    ["cli"],
]
ROOTS = {"lib", "main"}  # the crate root and the binary see everything

PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
GROUP = re.compile(r"\bcrate::\{([^}]*)\}")
GROUP_ITEM = re.compile(r"(?:^|[,{\s])([a-z_][a-z0-9_]*)(?=::|\s*[,}]|\s*$)")


def strip(text):
    """The code of a file without its tests and line comments."""
    text = text.split("#[cfg(test)]")[0]
    return re.sub(r"//[^\n]*", "", text)


def imports(src):
    edges = {}
    for root, _, files in os.walk(src):
        for name in files:
            if not name.endswith(".rs"):
                continue
            top = os.path.relpath(os.path.join(root, name), src).split(os.sep)[0]
            top = top[:-3] if top.endswith(".rs") else top
            if top in ROOTS:
                continue
            with open(os.path.join(root, name), encoding="utf-8") as f:
                code = strip(f.read())
            found = set(PATH.findall(code))
            for group in GROUP.findall(code):
                found.update(GROUP_ITEM.findall(group))
            found -= {top, "self", "super"}
            edges.setdefault(top, set()).update(found)
    return edges


def cycles(edges):
    """Strongly connected sets of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return found


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
    edges = imports(src)
    layer = {module: n for n, group in enumerate(LAYERS) for module in group}
    problems = []
    for component in cycles(edges):
        inner = [f"{a} -> {b}" for a in component for b in sorted(edges.get(a, ())) if b in component]
        problems.append(f"import cycle: {', '.join(component)} ({'; '.join(inner)})")
    for module in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if module not in layer:
            problems.append(f"{module}: not in any layer; add it to LAYERS and docs/ARCHITECTURE.md")
    for module, targets in sorted(edges.items()):
        for target in sorted(targets):
            if module in layer and target in layer and layer[target] >= layer[module]:
                how = "sideways" if layer[target] == layer[module] else "up"
                problems.append(f"{module} imports {target}: {how} a layer")
    if problems:
        print("\n".join(problems))
        return 1
    for n, group in enumerate(LAYERS):
        print(f"layer {n}: {', '.join(group)}")
    print(f"{len(layer)} modules, {sum(len(t) for t in edges.values())} imports between them, no cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
