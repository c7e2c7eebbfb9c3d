"""Generate docs/api.md, the Python API reference, from the docstrings of ``axlpy``.

Every name in ``axlpy.__all__`` gets a section: its signature and docstring, and for a
class its public methods and properties (in source order), an enum's members, a
dataclass's fields. Sphinx roles such as ``:class:`~axlpy.Journal``` become plain code.
The output depends only on the source, so tests/test_docs.py can check it is current.

Usage::

    .venv/bin/python scripts/gen_api_docs.py          # rewrite docs/api.md
    .venv/bin/python scripts/gen_api_docs.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "api.md"

#: sections, in order; a public name not listed here lands in "Other names"
GROUPS: list[tuple[str, list[str]]] = [
    ("Journals and transfers", ["Journal", "Transfer", "TransferType", "wait_all"]),
    ("Status and progress", ["TransferStatus", "FileStatus", "Progress", "CancelReport"]),
    ("States", ["TransferState", "FileState"]),
    ("Configuration and limits", ["config", "default_journal_path", "Limits"]),
    ("Checkpoint lifecycle (docs/lifecycle.md)", [
        "restore_point", "RestorePoint", "commit_checkpoint", "update_pointer", "prune",
        "RetentionPolicy", "PruneReport"]),
]

_ROLE = re.compile(r":(?:class|func|meth|attr|data|exc|mod|obj):`~?([^`]+)`")
_ADDR = re.compile(r" at 0x[0-9a-f]+")


def _doc(obj: Any, *, inherit: bool = True) -> str:
    d = inspect.getdoc(obj) if inherit else inspect.cleandoc(getattr(obj, "__doc__", "") or "")
    return _ROLE.sub(r"`\1`", d or "").strip()


class _Ann:
    """An annotation shown as written (``from __future__ import annotations`` keeps them
    as strings, which inspect would print quoted)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _sig(obj: Any, *, drop_self: bool = False) -> str:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    params = list(sig.parameters.values())
    if drop_self and params and params[0].name in ("self", "cls"):
        params = params[1:]
    params = [p.replace(annotation=_Ann(p.annotation)) if isinstance(p.annotation, str)
              else p for p in params]
    ret = sig.return_annotation
    sig = sig.replace(parameters=params,
                      return_annotation=_Ann(ret) if isinstance(ret, str) else ret)
    return _ADDR.sub("", str(sig))


def _members(cls: type) -> list[tuple[str, Any]]:
    """Public methods and properties defined on ``cls`` itself, in source order."""
    out = []
    for name, val in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(val, (staticmethod, classmethod)):
            val = val.__func__
        if isinstance(val, property) or inspect.isfunction(val):
            out.append((name, val))
    return out


def _class(name: str, cls: type) -> list[str]:
    bases = [b.__name__ for b in cls.__bases__ if b is not object]
    out = [f"### `{name}`", ""]
    if issubclass(cls, (enum.Enum, BaseException)) or "__init__" not in vars(cls):
        head = f"class {name}({', '.join(bases)})" if bases else f"class {name}"
    else:
        head = f"class {name}{_sig(cls).removesuffix(' -> None')}"
        if bases:
            out += [f"Bases: {', '.join(f'`{b}`' for b in bases)}", ""]
    out += ["```python", head, "```", ""]
    if _doc(cls):
        out += [_doc(cls), ""]
    if issubclass(cls, enum.Enum):
        out += ["| member | value |", "| --- | --- |"]
        out += [f"| `{m.name}` | `{m.value!r}` |" for m in cls]
        out.append("")
        return out
    if dataclasses.is_dataclass(cls):
        fields = [f for f in dataclasses.fields(cls) if not f.name.startswith("_")]
        out += ["| field | type |", "| --- | --- |"]
        out += [f"| `{f.name}` | `{f.type}` |" for f in fields]
        out.append("")
    for mname, val in _members(cls):
        if isinstance(val, property):
            out += [f"#### `{name}.{mname}` (property)", ""]
            if _doc(val.fget, inherit=False):
                out += [_doc(val.fget, inherit=False), ""]
            continue
        out += [f"#### `{name}.{mname}()`", "", "```python",
                f"{mname}{_sig(val, drop_self=True)}", "```", ""]
        if _doc(val, inherit=False):
            out += [_doc(val, inherit=False), ""]
    return out


def _function(name: str, fn: Any) -> list[str]:
    out = [f"### `{name}()`", "", "```python", f"{name}{_sig(fn)}", "```", ""]
    if _doc(fn):
        out += [_doc(fn), ""]
    return out


def _entry(name: str, obj: Any) -> list[str]:
    if inspect.isclass(obj):
        return _class(name, obj)
    if callable(obj):
        return _function(name, obj)
    return [f"### `{name}`", "", f"`{obj!r}`", ""]


def render() -> str:
    import axlpy

    names = list(axlpy.__all__)
    errors = sorted(n for n in names if inspect.isclass(getattr(axlpy, n))
                    and issubclass(getattr(axlpy, n), BaseException))
    placed = {n for _, group in GROUPS for n in group} | set(errors)
    other = sorted(n for n in names if n not in placed and not n.startswith("__"))
    out = [
        "# Python API reference",
        "",
        "<!-- Generated from the docstrings by scripts/gen_api_docs.py; do not edit. -->",
        "",
        f"Everything below is importable from `axlpy` (version {axlpy.__version__}). The",
        "command line is documented in [cli.md](cli.md); the on-disk protocol in",
        "[design.md](design.md).",
        "",
    ]
    sections = [(title, [n for n in group if n in names]) for title, group in GROUPS]
    sections.append(("Errors", errors))
    if other:
        sections.append(("Other names", other))
    out += ["Contents:", ""]
    for title, group in sections:
        anchor = title.lower().replace(" ", "-")
        out.append(f"- [{title}](#{anchor}): " + ", ".join(f"`{n}`" for n in group))
    out.append("")
    for title, group in sections:
        out += [f"## {title}", ""]
        if title == "Errors":
            tree = _doc(sys.modules["axlpy._errors"])
            out += [tree, ""]
        for n in group:
            out += _entry(n, getattr(axlpy, n))
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str]) -> int:
    new = render()
    old = DOC.read_text() if DOC.exists() else ""
    if "--check" in argv:
        if new != old:
            print(f"{DOC} is out of date: run .venv/bin/python scripts/gen_api_docs.py",
                  file=sys.stderr)
            return 1
        return 0
    if new != old:
        DOC.write_text(new)
        print(f"rewrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
