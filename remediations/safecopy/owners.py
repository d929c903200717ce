"""Ownership is user data: can this process give a copy the owner of its source? Probed, not guessed.

Under the shipped systemd unit chown(2) is not permitted (no CAP_CHOWN, and ``SystemCallFilter=~@privileged``
makes the chown calls fail with EPERM); ``systemd/nodewarden.service.d/remediate-files.conf`` grants what
migrate and restore need. The probe chowns a private pipe, so it sees both the capability and the filter.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from remediations.safecopy.errors import OwnershipRefused

CanChown = Callable[[int, int], bool]
DROP_IN = "systemd/nodewarden.service.d/remediate-files.conf"


def can_chown(uid: int, gid: int) -> bool:
    """Whether this process may set a file's owner to ``uid:gid`` (probed on a private pipe)."""
    r, w = os.pipe()
    try:
        os.fchown(r, uid, gid)
        return True
    except PermissionError:
        return False
    finally:
        os.close(r)
        os.close(w)


def owners_of(paths: Iterable[str]) -> dict[tuple[int, int], str]:
    """``{(uid, gid): first path with that owner}`` of the paths that exist."""
    out: dict[tuple[int, int], str] = {}
    for p in paths:
        try:
            st = os.stat(p, follow_symlinks=False)
        except OSError:
            continue
        out.setdefault((st.st_uid, st.st_gid), p)
    return out


def check_owners(paths: Iterable[str], probe: CanChown = can_chown, limit: int = 5) -> None:
    """:class:`OwnershipRefused` naming the owners (and a file of each) this process cannot give a copy."""
    bad = [(uid, gid, p) for (uid, gid), p in owners_of(paths).items() if not probe(uid, gid)]
    if not bad:
        return
    shown = ", ".join(f"{uid}:{gid} ({p})" for uid, gid, p in bad[:limit])
    more = f" and {len(bad) - limit} more owners" if len(bad) > limit else ""
    raise OwnershipRefused(
        f"cannot keep file owners {shown}{more}: this process may not chown (CAP_CHOWN missing or the chown "
        f"system calls filtered); nothing was moved. Under systemd install {DROP_IN} "
        "(docs/migrate-restore.md, 'Running under systemd')")
