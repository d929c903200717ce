"""YAML loading that remembers where every key and value came from, in bounded time and memory.

Every YAML input (config, web config, rule files, policy, scenarios, rule tests) goes through :func:`load`,
so errors read ``file:line:column: message``. The document is built from libyaml's event stream (PyYAML's C
parser: about 40x faster than a pure-Python parser on a 10 MB rule file) into :class:`Map` and :class:`Seq`,
plain ``dict``/``list`` subclasses that carry the positions. Scalars are resolved with the YAML 1.2 core
schema (as Go's yaml.v3 and ruamel.yaml do: ``yes``/``on`` are strings). Limits, each a located error:

* input size: :data:`MAX_BYTES` (32 MiB);
* nodes after alias expansion: :data:`MAX_NODES` (2,000,000), so a "billion laughs" file is refused
  at the alias that crosses it instead of eating memory;
* nesting depth: :data:`MAX_DEPTH` (200);
* tags other than the standard ``!!str !!int !!float !!bool !!null !!map !!seq`` (e.g.
  ``!!python/object/apply:...``) are refused; duplicate keys are refused at the second one.
"""

from __future__ import annotations

import contextlib
import gc
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from agent.core.errors import ConfigError

MAX_BYTES = 32 * 1024 * 1024
MAX_NODES = 2_000_000
MAX_DEPTH = 200
MAX_PROBLEMS = 100  # validation problems listed per file; the rest are counted

Pos = tuple[int, int]  # 1-based (line, column)

_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"^[-+]?(?:0b[01_]+|0o[0-7_]+|0x[0-9a-fA-F_]+|[0-9][0-9_]*)$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?$")
_SPECIAL = {".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf, ".nan": math.nan}
_STD = "tag:yaml.org,2002:"
_MAYBE_TYPED = frozenset("0123456789+-.~nNtTfF")  # first characters of null, bool, int and float scalars
_TAGS = {f"{_STD}{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq")} | {"!"}


class Map(dict):
    """A YAML mapping: a dict with the position of itself (``pos``), each key and each value."""

    __slots__ = ("key_pos", "pos", "value_pos")

    def __init__(self, pos: Pos = (1, 1)) -> None:
        super().__init__()
        self.pos = pos
        self.key_pos: dict[Any, Pos] = {}
        self.value_pos: dict[Any, Pos] = {}


class Seq(list):
    """A YAML sequence: a list with the position of itself (``pos``) and of each item."""

    __slots__ = ("item_pos", "pos")

    def __init__(self, pos: Pos = (1, 1)) -> None:
        super().__init__()
        self.pos = pos
        self.item_pos: list[Pos] = []


def _pos(mark: Any) -> Pos:
    return (mark.line + 1, mark.column + 1)


def _scalar(ev: Any, filename: str) -> Any:
    """A scalar event's value under the YAML 1.2 core schema (quoted: always a string)."""
    v, tag = ev.value, ev.tag
    if tag is not None and tag not in _TAGS:
        raise _error(filename, ev.start_mark, f"unsupported YAML tag {tag.replace(_STD, '!!')}")
    if tag == "!" or tag == f"{_STD}str" or (tag is None and not ev.implicit[0]):
        return v
    kind = tag.removeprefix(_STD) if tag else None
    if kind in (None, "null") and _NULL.match(v):
        return None
    if kind in (None, "bool") and v in _BOOL:
        return _BOOL[v]
    if kind in (None, "int") and _INT.match(v):
        return int(v.replace("_", ""), 0) if v.lstrip("+-")[:2] in ("0b", "0o", "0x") else int(v.replace("_", ""))
    if kind in (None, "float", "int"):
        low = v.lower()
        if low in _SPECIAL:
            return _SPECIAL[low]
        if _FLOAT.match(v):
            f = float(v.replace("_", ""))
            if math.isinf(f):  # Go's strconv.ParseFloat: "value out of range"; only .inf spells infinity
                raise _error(filename, ev.start_mark, f"number {v} is out of range (use .inf for infinity)")
            return f
    if kind is None:
        return v
    raise _error(filename, ev.start_mark, f"cannot decode {v!r} as !!{kind}")


def _error(filename: str, mark: Any, message: str) -> ConfigError:
    line, col = _pos(mark) if mark is not None else (1, 1)
    return ConfigError(f"{filename}:{line}:{col}: YAML error: {message}")


class _Builder:
    """Turns libyaml events into Map/Seq/scalars, counting nodes (aliases count their whole subtree)."""

    def __init__(self, filename: str, max_nodes: int) -> None:
        self.filename = filename
        self.max_nodes = max_nodes
        self.nodes = 0
        self.anchors: dict[str, tuple[Any, int]] = {}  # anchor -> (value, expanded size)

    def count(self, n: int, mark: Any) -> None:
        self.nodes += n
        if self.nodes > self.max_nodes:
            raise _error(self.filename, mark, f"document expands to more than {self.max_nodes:,} nodes "
                                              "(YAML aliases or size); refused")

    def build(self, events: Any) -> Any:
        """The single document of the stream (None when empty)."""
        root: Any = None
        docs = 0
        # stack frames: [container, size, pending key, key position, anchor, keys that came from a merge]
        stack: list[list[Any]] = []
        depth_limit = MAX_DEPTH
        for ev in events:
            cls = type(ev)
            if cls is yaml.ScalarEvent:
                v = ev.value
                if ev.tag is None and (not ev.implicit[0] or (v and v[0] not in _MAYBE_TYPED)):
                    value = v  # quoted, or plain starting like no null/bool/number does: a string
                else:
                    value = _scalar(ev, self.filename)
                mark = ev.start_mark
                size, vpos = 1, (mark.line + 1, mark.column + 1)
                self.nodes += 1
                if self.nodes > self.max_nodes:
                    self.count(0, mark)
                if ev.anchor:
                    self.anchors[ev.anchor] = (value, 1)
            elif cls is yaml.AliasEvent:
                if ev.anchor not in self.anchors:
                    raise _error(self.filename, ev.start_mark, f"unknown alias *{ev.anchor}")
                value, size = self.anchors[ev.anchor]
                vpos = _pos(ev.start_mark)
                self.count(size, ev.start_mark)
            elif cls is yaml.MappingStartEvent or cls is yaml.SequenceStartEvent:
                if ev.tag is not None and ev.tag not in _TAGS:
                    raise _error(self.filename, ev.start_mark, f"unsupported YAML tag {ev.tag.replace(_STD, '!!')}")
                if len(stack) >= depth_limit:
                    raise _error(self.filename, ev.start_mark, f"nesting deeper than {depth_limit} levels")
                self.count(1, ev.start_mark)
                node = Map(_pos(ev.start_mark)) if cls is yaml.MappingStartEvent else Seq(_pos(ev.start_mark))
                stack.append([node, 1, _NOKEY, None, ev.anchor, set()])
                continue
            elif cls is yaml.MappingEndEvent or cls is yaml.SequenceEndEvent:
                node, size, _, _, anchor, _ = stack.pop()
                value, vpos = node, node.pos
                if anchor:
                    self.anchors[anchor] = (node, size)
            elif cls is yaml.DocumentStartEvent:
                docs += 1
                if docs > 1:
                    raise _error(self.filename, ev.start_mark, "expected a single document in the stream")
                continue
            else:  # StreamStart/End, DocumentEnd
                continue
            if not stack:
                root = value
                continue
            frame = stack[-1]
            frame[1] += size
            parent = frame[0]
            if type(parent) is Seq:
                parent.append(value)
                parent.item_pos.append(vpos)
            elif frame[2] is _NOKEY:
                if isinstance(value, (dict, list)):
                    raise ConfigError(f"{self.filename}:{vpos[0]}:{vpos[1]}: YAML error: mapping keys must be scalars")
                frame[2], frame[3] = value, vpos
            else:
                key, kmark = frame[2], frame[3]
                frame[2] = _NOKEY
                if key == "<<" and isinstance(value, (dict, list)):
                    frame[5].update(self._merge(parent, value, kmark))
                    continue
                if key in frame[5]:
                    frame[5].discard(key)
                elif key in parent:
                    raise ConfigError(f"{self.filename}:{kmark[0]}:{kmark[1]}: YAML error: found duplicate key {key!r}")
                parent[key] = value
                parent.key_pos[key] = kmark
                parent.value_pos[key] = vpos
        return root

    def _merge(self, parent: Map, value: Any, pos: Pos) -> list[Any]:
        """``<<: *base`` (or a list of them): keys not set explicitly come from the merged maps (returned)."""
        merged = []
        for src in value if isinstance(value, list) else [value]:
            if not isinstance(src, Map):
                raise ConfigError(f"{self.filename}:{pos[0]}:{pos[1]}: YAML error: a merge key (<<) needs a "
                                  "mapping or a list of mappings")
            for k, v in src.items():
                if k not in parent:
                    parent[k] = v
                    parent.key_pos[k] = pos
                    parent.value_pos[k] = src.value_pos.get(k, src.pos)
                    merged.append(k)
        return merged


_NOKEY = object()


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building a big acyclic tree (a third of the time of a
    10 MB rule file goes to collections that find nothing); it resumes, and catches up, afterwards."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def load(text: str, filename: str, max_nodes: int = MAX_NODES) -> Any:
    """Parse YAML text into :class:`Map`/:class:`Seq`/scalars; every problem raises ConfigError with position."""
    with paused_gc():
        return _load(text, filename, max_nodes)


def _load(text: str, filename: str, max_nodes: int) -> Any:
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{filename}:1:1: YAML error: input is {len(text):,} characters, over the "
                          f"{MAX_BYTES // (1024 * 1024)} MiB limit")
    try:
        return _Builder(filename, max_nodes).build(yaml.parse(text, Loader=yaml.CSafeLoader))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        raise _error(filename, mark, str(err.problem or err.context)) from err
    except yaml.reader.ReaderError as err:  # e.g. control characters: a character offset of its own
        at = err.position if isinstance(err.position, int) else 0
        line = text.count("\n", 0, at) + 1
        col = at - (text.rfind("\n", 0, at) + 1) + 1
        raise ConfigError(f"{filename}:{line}:{col}: YAML error: {err.reason or err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{filename}:1:1: YAML error: {err}") from err
    except RecursionError as err:
        raise ConfigError(f"{filename}:1:1: YAML error: nesting too deep") from err


def read_text(path: str | Path, what: str) -> str:
    """A YAML file's text: size-limited, UTF-8 (a bad byte is reported at its line and column)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{path}:1:1: cannot read {what}: {err.strerror}") from err
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{path}:1:1: {what} is larger than the {MAX_BYTES // (1024 * 1024)} MiB limit")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        col = len(data[data.rfind(b"\n", 0, err.start) + 1:err.start].decode("utf-8", "replace")) + 1
        raise ConfigError(f"{path}:{line}:{col}: {what} is not UTF-8: {err.reason} (byte 0x{data[err.start]:02x})"
                          ) from err


def position(root: Any, loc: Sequence[str | int], key: bool = False) -> tuple[int, int]:
    """1-based (line, column) of the node at ``loc`` inside ``root``; the deepest known ancestor otherwise.

    With ``key=True`` the position of the mapping key itself is returned (for unknown keys).
    """
    node = root
    best = getattr(root, "pos", (1, 1))
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, Map):
            if part not in node:
                break
            best = (node.key_pos if (key and last) else node.value_pos).get(part, best)
            node = node[part]
        elif isinstance(node, Seq) and isinstance(part, int) and 0 <= part < len(node):
            best = node.item_pos[part]
            node = node[part]
        else:
            break
    return best


def validation_problems(err: Any, root: Any, filename: str, rename: dict[str, str] | None = None) -> list[str]:
    """pydantic ValidationError -> ``file:line:column: key.path: message`` lines (unknown keys point at the key).

    ``rename`` maps field names to the YAML keys they are spelled as (e.g. ``continue_`` -> ``continue``).
    At most :data:`MAX_PROBLEMS` are listed; a last line counts the rest.
    """
    problems = []
    errors = err.errors()
    for e in errors[:MAX_PROBLEMS]:
        loc = tuple((rename or {}).get(p, p) if isinstance(p, str) else p for p in e["loc"])
        extra = e["type"] == "extra_forbidden"
        bad_key = bool(loc) and loc[-1] == "[key]"  # a dict key failed its own validator: point at the key
        if bad_key:
            loc = loc[:-1]
        line, col = position(root, loc, key=extra or bad_key)
        where = ".".join(str(p) for p in loc) or "(top level)"
        msg = f"unknown key {loc[-1]!r}" if extra else e["msg"].removeprefix("Value error, ")
        problems.append(f"{filename}:{line}:{col}: {where}: {msg}")
    if len(errors) > MAX_PROBLEMS:
        problems.append(f"{filename}:1:1: ... and {len(errors) - MAX_PROBLEMS:,} more problems")
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
    """Deep copy of loaded containers as plain dicts and lists (bounded: :func:`load` counted aliases)."""
    if isinstance(node, dict):
        return {str(k): plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    return node
