"""A griffe extension for the API reference (mkdocs.yml): docstrings here are prose written with
reST roles (:class:`~bioattn.x.Y`), ``::`` literal blocks and simple tables, which Markdown would
show as raw markup. This rewrites them, at load time and only for the docs, into Markdown: roles
into code spans, ``::`` into ``:`` (the indented block after it is already a Markdown code
block) and simple tables into preformatted blocks. The sources stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

#: :role:`target`, :role:`~a.b.Target`, :role:`text <target>`
_ROLE = re.compile(
    r":(?:class|func|meth|mod|data|attr|exc|obj|ref|doc):`(~?)([^`<]*?)\s*(?:<([^>]+)>)?`"
)
_RULE = re.compile(r"^\s*=+(?:\s+=+)+\s*$")  # a simple table's border: "====  ====="


def _role(match: re.Match[str]) -> str:
    tilde, text, target = match.groups()
    name = text or target or ""
    return f"`{name.rsplit('.', 1)[-1] if tilde else name}`"


def _clean(cell: str) -> str:
    return _ROLE.sub(lambda m: _role(m).strip("`"), cell).replace("``", "").rstrip()


def _table(block: list[str]) -> list[str]:
    """A simple table's lines with the markup gone and the columns aligned again: each line is
    cut at the columns of its border (where the markup is still there), then padded."""
    starts = [m.start() for m in re.finditer(r"=+", block[0])]
    rows = [
        [_clean(line[a:b]) for a, b in zip(starts, [*starts[1:], None], strict=True)]
        for line in block
        if not _RULE.match(line)
    ]
    widths = [max([len(row[k]) for row in rows] + [1]) for k in range(len(starts))]
    border = "  ".join("=" * w for w in widths)
    text = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return [border, *text, border]


def _tables(lines: list[str]) -> list[str]:
    """Simple tables (from a border to the last border before a blank line) as fenced blocks."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        if not _RULE.match(lines[i]):
            out.append(lines[i])
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end].strip():
            end += 1
        out += ["", "```text", *_table(lines[i:end]), "```"]
        i = end
    return out


def to_markdown(text: str) -> str:
    """``text`` (a reST-flavoured docstring) in Markdown."""
    lines = [re.sub(r"(\S)::$", r"\1:", line) for line in _tables(text.splitlines())]
    return "\n".join(_ROLE.sub(_role, line) for line in lines)


class RestRoles(Extension):
    """Rewrite every docstring with :func:`to_markdown` as griffe loads it."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
