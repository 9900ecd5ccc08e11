"""Write docs/api.md, the reference of suitkit's top-level Python API, from its docstrings.

    .venv/bin/python docs/apiref.py            # rewrite docs/api.md
    .venv/bin/python docs/apiref.py --check    # exit 1 if docs/api.md is out of date (tests do)

Documented: every name in ``suitkit.__all__`` (functions with their signatures, classes with
their public methods and properties, the error tree).
"""

from __future__ import annotations

import ast
import inspect
import itertools
import sys
from pathlib import Path

import suitkit
import suitkit.api

OUT = Path(__file__).with_name("api.md")

HEADER = """# Python API reference

Generated from the docstrings by `docs/apiref.py` (a test fails when this file is out of date).
Recipes: [python.md](python.md). Everything below is importable from the top package:
`import suitkit`, then `suitkit.build(...)`.
"""


def _signature(obj: object) -> str:
    """``(a: T = default, *, b: U) -> R`` with annotations as written in the source."""
    try:
        sig = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "(...)"
    params = [p for p in sig.parameters.values() if p.name != "self"]
    parts: list[str] = []
    star = False
    for p in params:
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        text = p.name
        if p.annotation is not p.empty:
            text += f": {p.annotation}"
        if p.default is not p.empty:
            text += f" = {p.default!r}"
        parts.append(text)
    result = f"({', '.join(parts)})"
    if sig.return_annotation not in (sig.empty, "None") and not inspect.isclass(obj):
        result += f" -> {sig.return_annotation}"
    return result


def _doc(obj: object) -> str:
    return inspect.cleandoc(inspect.getdoc(obj) or "(undocumented)")


def _section(name: str, obj: object) -> list[str]:
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        bases = ", ".join(b.__name__ for b in obj.__bases__)
        return [f"### `suitkit.{name}({bases})`", "", _doc(obj), ""]
    if inspect.isclass(obj):
        lines = [f"### class `suitkit.{name}{_signature(obj)}`", "", _doc(obj), ""]
        for member, value in vars(obj).items():
            if member.startswith("_"):
                continue
            if isinstance(value, property):
                lines += [f"#### property `{name}.{member}`", "", _doc(value), ""]
            elif inspect.isfunction(value):
                lines += [f"#### `{name}.{member}{_signature(value)}`", "", _doc(value), ""]
        return lines
    return [f"### `suitkit.{name}{_signature(obj)}`", "", _doc(obj), ""]


def _aliases() -> list[str]:
    """The type aliases of suitkit.api with the docstring written under each."""
    tree = ast.parse(inspect.getsource(suitkit.api))
    lines: list[str] = []
    body = tree.body
    for node, after in itertools.pairwise(body):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id[0].isupper()
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            name = node.targets[0].id
            lines += [f"### `{name} = {ast.unparse(node.value)}`", "",
                      inspect.cleandoc(after.value.value), ""]
    return lines


def render() -> str:
    lines = [HEADER, "## Functions and classes", ""]
    names = [n for n in suitkit.__all__ if n not in ("SPEC", "__version__")]
    values = {n: getattr(suitkit, n) for n in names}
    plain = [n for n in names
             if not (inspect.isclass(values[n]) and issubclass(values[n], BaseException))]
    errors = [n for n in names if n not in plain]
    for name in plain:
        lines += _section(name, values[name])
    lines += ["## Types", "", *_aliases()]
    lines += ["## Errors", "", _doc(sys.modules["suitkit.errors"]), ""]
    for name in errors:
        lines += _section(name, values[name])
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is out of date: run python docs/apiref.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
