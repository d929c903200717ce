"""YAML loading that remembers where every key and value came from (ruamel.yaml round-trip nodes).

Used by the config loader and the rule-file loader so errors read ``file:line:column: message``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from agent.core.errors import ConfigError


def load(text: str, filename: str) -> Any:
    """Parse YAML text into ruamel round-trip containers; syntax errors raise ConfigError with position."""
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        return yaml.load(text)
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        msg = f"{filename}:{line}:{col}: YAML error: {err.problem or err.context}"
        raise ConfigError(msg) from err
    except Exception as err:  # ruamel raises a few non-marked errors (e.g. duplicate keys)
        raise ConfigError(f"{filename}:1:1: YAML error: {err}") from err


def position(root: Any, loc: Sequence[str | int], key: bool = False) -> tuple[int, int]:
    """1-based (line, column) of the node at ``loc`` inside ``root``; the deepest known ancestor otherwise.

    With ``key=True`` the position of the mapping key itself is returned (for unknown keys).
    """
    node = root
    best = (1, 1)
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, CommentedMap) and part in node:
            line, col = node.lc.key(part) if (key and last) else node.lc.value(part)
            best = (line + 1, col + 1)
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            line, col = node.lc.item(part)
            best = (line + 1, col + 1)
            node = node[part]
        else:
            break
    return best


def validation_problems(err: Any, root: Any, filename: str, rename: dict[str, str] | None = None) -> list[str]:
    """pydantic ValidationError -> ``file:line:column: key.path: message`` lines (unknown keys point at the key).

    ``rename`` maps field names to the YAML keys they are spelled as (e.g. ``continue_`` -> ``continue``).
    """
    problems = []
    for e in err.errors():
        loc = tuple((rename or {}).get(p, p) if isinstance(p, str) else p for p in e["loc"])
        extra = e["type"] == "extra_forbidden"
        line, col = position(root, loc, key=extra)
        where = ".".join(str(p) for p in loc) or "(top level)"
        msg = f"unknown key {loc[-1]!r}" if extra else e["msg"].removeprefix("Value error, ")
        problems.append(f"{filename}:{line}:{col}: {where}: {msg}")
    return problems


def load_model(model: Any, text: str, filename: str, what: str, rename: dict[str, str] | None = None) -> Any:
    """YAML text validated into the pydantic ``model``; ConfigError lists every problem with its position.

    An empty document is an empty mapping; ``what`` names the document in the "must be a mapping" error.
    """
    from pydantic import ValidationError

    root = load(text, filename)
    if root is None:
        root = {}
    if not isinstance(root, dict):
        raise ConfigError(f"{filename}:1:1: {what} must be a mapping")
    try:
        return model.model_validate(plain(root)), root
    except ValidationError as err:
        problems = validation_problems(err, root, filename, rename)
        raise ConfigError("\n".join(problems), problems) from err


def plain(node: Any) -> Any:
    """Deep copy of ruamel containers as plain dicts and lists."""
    if isinstance(node, dict):
        return {str(k): plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    return node
