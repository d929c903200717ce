"""Checksum manifests of protected datasets: one line per file with its blake3 digest, size and path.

Format (UTF-8 text)::

    # nodewarden-manifest v1 blake3
    <64 hex digits>\\t<size in bytes>\\t<path relative to the dataset root>

Paths escape backslash, tab and newline as ``\\\\``, ``\\t``, ``\\n``. Lines starting with ``#`` and blank lines
are ignored. Parsing and rendering are pure; :func:`create` walks a directory and hashes it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from agent.core.errors import NodewardenError

HEADER = "# nodewarden-manifest v1 blake3"
DEFAULT_NAME = ".nodewarden.manifest"
RESERVED_PREFIX = ".nodewarden"        # manifest, quarantine: never part of a dataset
_HASH = re.compile(r"^[0-9a-f]{64}$")
_ESC = {"\\": "\\\\", "\t": "\\t", "\n": "\\n"}
_UNESC = {"\\": "\\", "t": "\t", "n": "\n"}


class ManifestError(NodewardenError):
    """A manifest cannot be read or parsed; the message names file:line."""


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One file of a dataset."""

    path: str
    size: int
    hash: str


def escape(path: str) -> str:
    """Escape backslash, tab and newline."""
    return "".join(_ESC.get(c, c) for c in path)


def unescape(text: str) -> str:
    """Inverse of :func:`escape`; ValueError on a dangling or unknown escape."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 >= len(text) or text[i + 1] not in _UNESC:
                raise ValueError("bad escape")
            out.append(_UNESC[text[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def check_rel(path: str) -> str:
    """A safe relative path (no absolute paths, no ``..``, not reserved); ValueError otherwise."""
    norm = os.path.normpath(path)
    if not path or os.path.isabs(path) or norm != path or norm == "." or norm.split(os.sep)[0] == ".." \
            or norm.startswith(RESERVED_PREFIX):
        raise ValueError(f"unsafe or reserved path {path!r}")
    return path


def parse(text: str, filename: str = "<manifest>") -> dict[str, ManifestEntry]:
    """Pure: manifest text -> entries by path; ManifestError naming file:line."""
    out: dict[str, ManifestEntry] = {}
    for n, line in enumerate(text.split("\n"), 1):
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        try:
            if len(parts) != 3:
                raise ValueError("expected HASH<TAB>SIZE<TAB>PATH")
            digest, size, path = parts[0], int(parts[1]), check_rel(unescape(parts[2]))
            if not _HASH.match(digest) or size < 0:
                raise ValueError("bad hash or size")
            if path in out:
                raise ValueError(f"duplicate path {path!r}")
        except ValueError as err:
            raise ManifestError(f"{filename}:{n}: {err}") from err
        out[path] = ManifestEntry(path, size, digest)
    return out


def render(entries: Iterable[ManifestEntry]) -> str:
    """Pure: entries -> manifest text (sorted by path)."""
    lines = [HEADER]
    lines += [f"{e.hash}\t{e.size}\t{escape(e.path)}" for e in sorted(entries, key=lambda e: e.path)]
    return "\n".join(lines) + "\n"


def load(path: str) -> dict[str, ManifestEntry]:
    """Read and parse a manifest file."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8")
    except OSError as err:
        raise ManifestError(f"cannot read manifest {path}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ManifestError(f"{path}:{line}: manifest is not UTF-8: {err.reason}") from err
    return parse(text, path)


def walk(root: str) -> Iterator[str]:
    """Relative paths of the regular files under ``root`` (reserved ``.nodewarden*`` names and temp files skipped)."""
    from remediations.safecopy import TMP_PREFIX

    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            entries = sorted(os.scandir(os.path.join(root, rel_dir)), key=lambda e: e.name)
        except OSError as err:
            raise ManifestError(f"cannot list {os.path.join(root, rel_dir)}: {err.strerror}") from err
        for e in entries:
            if e.name.startswith((RESERVED_PREFIX, TMP_PREFIX)):
                continue
            rel = os.path.join(rel_dir, e.name) if rel_dir else e.name
            if e.is_dir(follow_symlinks=False):
                stack.append(rel)
            elif e.is_file(follow_symlinks=False):
                yield rel


def create(root: str, threads: int = 1) -> list[ManifestEntry]:
    """Hash every file under ``root``."""
    from remediations.safecopy import hash_file

    out = []
    for rel in walk(root):
        full = os.path.join(root, rel)
        out.append(ManifestEntry(rel, os.path.getsize(full), hash_file(full, threads)))
    return out


def write(path: str, entries: Iterable[ManifestEntry]) -> None:
    """Write a manifest atomically (temp file, fsync, rename, fsync directory)."""
    from remediations.safecopy import fsync_dir

    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(render(entries))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    except OSError as err:
        raise ManifestError(f"cannot write manifest {path}: {err.strerror}") from err
