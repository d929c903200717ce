"""The safe-copy core shared by ``migrate`` and ``restore``: move or copy a file without ever losing it.

One file operation walks these steps; each is recorded in a durable step log (an fsynced, append-only JSON
lines file in the state dir) *before* the next one starts::

    begin     src, dst, tmp, source identity (dev, ino, size, mtime)     nothing changed yet
    (copy src -> tmp in dst's directory, hashing; fsync; copy mode, owner, xattrs, times; re-read and verify;
     re-check that src is unchanged and not open for writing; link the damaged dst into quarantine)
    copied    blake3 of the data                                           tmp complete and verified
    (link tmp -> dst (no replace) or rename tmp -> dst (replace); fsync dst's directory)
    renamed                                                                dst durable
    (source action: unlink src, or replace it atomically with a symlink to dst, or keep it; fsync its dir)
    done

or ends in ``failed`` / ``skipped`` (with the reason) or ``rolledback`` (by :meth:`SafeMover.recover`).
After a crash at any point :meth:`SafeMover.recover` rolls every open operation back (``begin``; ``copied``
while tmp was not yet in place) or forward (``copied`` once dst holds the verified data; ``renamed``): every
file then exists exactly once (a symlink left at the old path is not a copy) with its original content, and
no temporary file remains. The source is touched only after the verified copy is durable, and only when it
is still the same inode; a source open for writing (any process) is never moved.

The package is split by concern; each module owns its state and imports only the ones listed before it:
``errors`` -> ``fsops`` (names, durable directory ops, place, source action, quarantine) -> ``owners``
(can this process keep a file's owner) -> ``verify``
(hashing, identity checks) -> ``writers`` (open-for-write scan) -> ``throttle`` -> ``steplog`` -> ``copy``
(the :class:`Copier`) -> ``recover`` -> ``mover`` (:class:`SafeMover`, batches). Import from the package.
"""

from __future__ import annotations

from remediations.safecopy.copy import CHUNK, Copier, Progress
from remediations.safecopy.errors import OwnershipRefused, SafeCopyError
from remediations.safecopy.fsops import TMP_PREFIX, fsync_dir, make_parents, syncfs
from remediations.safecopy.mover import BATCH_FILES, After, Move, Result, SafeMover
from remediations.safecopy.owners import CanChown, can_chown, check_owners
from remediations.safecopy.recover import Recovery
from remediations.safecopy.steplog import FINAL_STEPS, OPEN_STEPS, StepLog
from remediations.safecopy.throttle import Throttle
from remediations.safecopy.verify import BIG, hash_file
from remediations.safecopy.writers import ProcWriters, Writers, flags_write, parse_fdinfo_flags, writers_in

__all__ = [
    "BATCH_FILES", "BIG", "CHUNK", "FINAL_STEPS", "OPEN_STEPS", "TMP_PREFIX", "After", "CanChown", "Copier", "Move",
    "OwnershipRefused", "ProcWriters", "Progress", "Recovery", "Result", "SafeCopyError", "SafeMover", "StepLog",
    "Throttle", "Writers", "can_chown", "check_owners", "flags_write", "fsync_dir", "hash_file", "make_parents",
    "parse_fdinfo_flags", "syncfs", "writers_in",
]
