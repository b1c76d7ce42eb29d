"""Rewrite calls of the old flat ``Store`` surface to its parts (issue 19, point 7).

``store.get_ref(name)`` becomes ``store.refs.get(name)``, ``store.put(data)`` becomes
``store.objects.put(data)``, and so on (the table is :data:`MOVES`). The store is found
by the stdlib ``ast`` module, the edit is an exact text replacement of the attribute name
at the node's position, so formatting and comments stay as they were. Running it twice
changes nothing the second time.

An expression counts as a store when it is

* a name bound in its scope (or an enclosing one) to ``Store(...)``, ``Store.init(...)``
  or a call of a function annotated ``-> Store``, by ``=`` or ``with ... as``;
* the name ``store``, anywhere; a name assigned from another store expression;
* a parameter annotated with ``Store`` (``Store | None`` too), or defaulting to a store
  (``lambda s=store: ...``), or named after a pytest fixture that yields a Store (in the same file or a conftest.py
  above it);
* an attribute named ``store`` or ``_store`` (``self.store``, ``ctx.store``);
* an item of a list named ``stores`` (``stores[i]``), a pool's ``stores.get()``, and
  ``a if c else b`` of two stores.

What this misses mypy reports (``"Store" has no attribute ...``): fix those by hand.

Usage: ``python tools/store_codemod.py [--check] [PATH ...]`` (default: cas cli tests
bench tools). ``--check`` rewrites nothing and exits 1 if an old call remains.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

#: old Store method -> (part, method of the part)
MOVES: dict[str, tuple[str, str]] = {
    **{
        name: ("objects", name)
        for name in (
            "get", "get_typed", "require", "has", "record", "iter_blob", "chunk_ids",
            "examine", "missing", "records", "get_many", "get_many_frames", "iter_records",
            "iter_ids", "resolve_prefix", "resolve_unique", "write", "put", "put_object",
            "put_stream", "put_file",
        )
    },
    "stage_put": ("stage", "put"),
    "stage_get": ("stage", "get"),
    "promote": ("stage", "promote"),
    "stage_clear": ("stage", "clear"),
    "iter_stage": ("stage", "entries"),
    "stage_expire": ("stage", "expire"),
    "get_ref": ("refs", "get"),
    "list_refs": ("refs", "as_dict"),
    "set_ref": ("refs", "set"),
    "reflog": ("refs", "log"),
    "expire_reflog": ("refs", "expire_log"),
    **{
        name: ("maintenance", name)
        for name in (
            "object_times", "object_time", "sweep", "prune_times", "stamp_missing", "delete",
            "note_reads", "flush_reads", "read_times", "evicted_ids", "evict",
            "forget_evicted",
        )
    },
    "get_meta": ("meta", "get"),
    "set_meta": ("meta", "set"),
}

DEFAULT_ROOTS = ("cas", "cli", "tests", "bench", "tools")
STORE_ATTRS = frozenset({"store", "_store"})
#: names that are a store wherever they appear (as a parameter, ``store = ctx.store``)
STORE_NAMES = frozenset({"store"})

Scope = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda


def _names_store(annotation: ast.expr | None) -> bool:
    """Whether an annotation mentions the type ``Store`` (``Iterator[Store]`` too)."""
    if annotation is None:
        return False
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        try:
            annotation = ast.parse(annotation.value, mode="eval").body
        except SyntaxError:
            return False
    return any(isinstance(n, ast.Name) and n.id == "Store" for n in ast.walk(annotation))


def _is_fixture(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any("fixture" in ast.unparse(d) for d in fn.decorator_list)


def _functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


class Knowledge:
    """What the whole tree says about stores: factories and fixtures, by name."""

    def __init__(self, files: dict[Path, ast.Module]) -> None:
        self.factories: set[str] = {"Store"}
        self.fixtures: dict[Path, set[str]] = {}
        for path, tree in files.items():
            for fn in _functions(tree):
                if not _names_store(fn.returns):
                    continue
                if _is_fixture(fn):
                    self.fixtures.setdefault(path, set()).add(fn.name)
                elif isinstance(fn.returns, ast.Name | ast.Constant):
                    self.factories.add(fn.name)

    def fixtures_for(self, path: Path) -> set[str]:
        names = set(self.fixtures.get(path, set()))
        for other, found in self.fixtures.items():
            if other.name == "conftest.py" and path.is_relative_to(other.parent):
                names |= found
        return names


class Finder(ast.NodeVisitor):
    """Collects the attribute nodes ``<store>.<old method>`` of one module."""

    def __init__(self, know: Knowledge, path: Path) -> None:
        self.know = know
        self.params = know.fixtures_for(path)
        self.scopes: list[set[str]] = [set()]
        self.found: list[ast.Attribute] = []

    def is_store(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Name):
            return node.id in STORE_NAMES or any(node.id in scope for scope in self.scopes)
        if isinstance(node, ast.Attribute):
            return node.attr in STORE_ATTRS
        if isinstance(node, ast.Subscript):  # stores[i]
            return _last_name(node.value) == "stores"
        if isinstance(node, ast.IfExp):
            return self.is_store(node.body) and self.is_store(node.orelse)
        if isinstance(node, ast.Call):  # a pool's stores.get()
            func = node.func
            return isinstance(func, ast.Attribute) and func.attr == "get" and _last_name(func.value) == "stores"
        return False

    def makes_store(self, node: ast.expr | None) -> bool:
        if not isinstance(node, ast.Call):
            return False
        func = node.func
        if isinstance(func, ast.Name):
            return func.id in self.know.factories
        return isinstance(func, ast.Attribute) and ast.unparse(func) == "Store.init"

    def bound(self, body: ast.AST) -> set[str]:
        """Names bound to a store in ``body``, not looking into nested scopes."""
        names: set[str] = set()
        for node in _walk_scope(body):
            if isinstance(node, ast.Assign) and (self.makes_store(node.value) or self.is_store(node.value)):
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if _names_store(node.annotation) or self.makes_store(node.value):
                    names.add(node.target.id)
            elif isinstance(node, ast.withitem) and isinstance(node.optional_vars, ast.Name):
                if self.makes_store(node.context_expr):
                    names.add(node.optional_vars.id)
        return names

    def params_of(self, fn: Scope) -> set[str]:
        args = fn.args
        every = [*args.posonlyargs, *args.args, *args.kwonlyargs]
        positional = [*args.posonlyargs, *args.args]
        defaults = dict(zip(positional[len(positional) - len(args.defaults):], args.defaults, strict=True))
        defaults |= {a: d for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None}
        return {
            a.arg
            for a in every
            if _names_store(a.annotation) or a.arg in self.params
            or (a in defaults and self.is_store(defaults[a]))  # lambda s=store: ...
        }

    def visit_Module(self, node: ast.Module) -> None:
        self.scopes[0] = self.bound(node)
        self.generic_visit(node)

    def _visit_scope(self, node: Scope) -> None:
        self.scopes.append(self.params_of(node) | self.bound(node))
        self.generic_visit(node)
        self.scopes.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _visit_scope

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in MOVES and self.is_store(node.value):
            self.found.append(node)
        self.generic_visit(node)


def _last_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else None


def _walk_scope(node: ast.AST) -> Iterator[ast.AST]:
    for child in ast.iter_child_nodes(node):
        yield child
        if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            yield from _walk_scope(child)


def rewrite(source: str, found: list[ast.Attribute]) -> str:
    """``source`` with each found attribute name replaced by ``part.method``."""
    lines = [line.encode() for line in source.splitlines(keepends=True)]
    for node in sorted(found, key=lambda n: (n.end_lineno, n.end_col_offset), reverse=True):
        assert node.end_lineno is not None and node.end_col_offset is not None
        part, method = MOVES[node.attr]
        row = node.end_lineno - 1
        end = node.end_col_offset
        start = end - len(node.attr)
        line = lines[row]
        assert line[start:end] == node.attr.encode(), (node.lineno, line)
        lines[row] = line[:start] + f"{part}.{method}".encode() + line[end:]
    return b"".join(lines).decode()


def python_files(roots: list[str]) -> Iterator[Path]:
    for root in roots:
        path = Path(root)
        if path.is_file():
            yield path
        else:
            yield from sorted(p for p in path.rglob("*.py") if ".venv" not in p.parts)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    roots = [a for a in argv if a != "--check"] or list(DEFAULT_ROOTS)
    sources = {p: p.read_text() for p in python_files(roots)}
    trees = {p: ast.parse(text, filename=str(p)) for p, text in sources.items()}
    know = Knowledge(trees)
    left = 0
    for path, tree in trees.items():
        finder = Finder(know, path)
        finder.visit(tree)
        if not finder.found:
            continue
        left += len(finder.found)
        if check:
            for node in finder.found:
                print(f"{path}:{node.lineno}: old Store call .{node.attr} ({ast.unparse(node)})")
        else:
            path.write_text(rewrite(sources[path], finder.found))
            print(f"{path}: {len(finder.found)} rewritten")
    if check and left:
        print(f"{left} old Store call(s) remain; run python tools/store_codemod.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
