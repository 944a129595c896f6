"""Every config key is read somewhere: a key that validates but does nothing is a silent surprise."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from prunelimit.config.schema import SECTIONS, RunConfig

SRC = Path(__file__).resolve().parents[2] / "src" / "prunelimit"


def _outside_validation(tree: ast.AST):
    """Every node except those inside a ``__post_init__`` (validation reads every field of its class)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef) and node.name == "__post_init__":
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def attribute_reads() -> dict[str, set[Path]]:
    """{attribute name: files that read it as ``x.name`` or ``getattr(x, "name")`` outside validation}."""
    reads: dict[str, set[Path]] = {}
    for path in SRC.rglob("*.py"):
        for node in _outside_validation(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                reads.setdefault(node.attr, set()).add(path)
            elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" and len(node.args) > 1
                  and isinstance(node.args[1], ast.Constant)):
                reads.setdefault(node.args[1].value, set()).add(path)
    return reads


def read_by_name() -> set[str]:
    """Keys read through a list of names rather than an attribute: DataConfig.options() hands the
    USER_DATA_OPTIONS keys to the dataset factories."""
    from prunelimit.data.registry import USER_DATA_OPTIONS

    return {f"data.{k}" for k in USER_DATA_OPTIONS}


def test_every_schema_field_is_read_outside_its_validation():
    """A static check: some code reads ``.field`` outside the ``__post_init__`` that validates it."""
    reads = attribute_reads()
    cfg = RunConfig()
    dead = []
    for f in dataclasses.fields(RunConfig):
        if f.name not in SECTIONS:
            fields, label = [f.name], ""
        else:
            fields, label = [g.name for g in dataclasses.fields(type(getattr(cfg, f.name)))], f"{f.name}."
        dead += [label + name for name in fields if not reads.get(name) and label + name not in read_by_name()]
    assert not dead, f"config keys that nothing reads (remove them or use them): {dead}"


def test_the_check_can_fail():
    """Validation alone does not count as a read: density_kernel, read only by __post_init__ before issue 7,
    would be reported; a key read by the pipeline is found."""
    tree = ast.parse("class C:\n    def __post_init__(self):\n        self.only_validated\n"
                     "def use(c):\n    return c.really_read\n")
    names = {n.attr for n in _outside_validation(tree) if isinstance(n, ast.Attribute)}
    assert names == {"really_read"}
    assert "lanczos_iter" in attribute_reads()
