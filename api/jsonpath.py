"""A small JSONPath subset for mappings: `$`, `.name`, `['name']`, `[n]`, `[*]`.

The pipeline's own paths (`operators.schema_gate.json_path`) only walk `$.a.b`; provider payloads
need array items (SendGrid posts a list) and keys that are not identifiers (`$['Status Code']`).
"""

from __future__ import annotations

import re
from functools import lru_cache

_STEP = re.compile(r"""\.([A-Za-z_][\w-]*)|\[(\d+)\]|\[\*\]|\.\*|\['([^']*)'\]|\["([^"]*)"\]""")
_ALL = object()  # the wildcard step
Step = str | int | object


class PathError(ValueError):
    pass


@lru_cache(maxsize=1024)
def compile_path(path: str) -> tuple[Step, ...]:
    """The steps of a path; PathError naming the first character that is not understood."""
    if not isinstance(path, str) or not path.startswith("$"):
        raise PathError(f"JSONPath {path!r} must start with $")
    steps: list[Step] = []
    pos = 1
    while pos < len(path):
        m = _STEP.match(path, pos)
        if m is None:
            raise PathError(f"JSONPath {path!r}: cannot read from {path[pos:]!r}")
        name, index, quoted, dquoted = m.groups()
        if index is not None:
            steps.append(int(index))
        elif name is not None or quoted is not None or dquoted is not None:
            steps.append(next(s for s in (name, quoted, dquoted) if s is not None))
        else:
            steps.append(_ALL)
        pos = m.end()
    return tuple(steps)


def find(doc: object, path: str) -> list[object]:
    """Every value the path selects (a wildcard can select several), in document order."""
    nodes = [doc]
    for step in compile_path(path):
        nxt: list[object] = []
        for node in nodes:
            if step is _ALL:
                if isinstance(node, dict | list):
                    nxt.extend(node.values() if isinstance(node, dict) else node)
            elif isinstance(step, int):
                if isinstance(node, list) and step < len(node):
                    nxt.append(node[step])
            elif isinstance(node, dict) and step in node:
                nxt.append(node[step])
        nodes = nxt
    return nodes


def first(doc: object, path: str) -> object | None:
    """The first value selected, or None when the path selects nothing."""
    found = find(doc, path)
    return found[0] if found else None
