"""Basic auth of the HTTP endpoint: bcrypt checks behind caches and one lane (:class:`BasicAuth`), and the
admission of uncached checks to that lane, bounded in all and per client address (:class:`AuthGate`)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor


class BasicAuth:
    """bcrypt checks (~50-300 ms each) behind two caches and one lane, as exporter-toolkit does.

    Outcomes are cached by a digest of (user, password, hash): successes in their own LRU (which failed
    attempts cannot evict), failures in another, so a client repeating a wrong password costs a lookup.
    Uncached checks run one at a time (:meth:`verify` holds a lock), so wrong-password floods use at most
    one core; the server also bounds how many wait (429 beyond). An unknown user is checked against a dummy
    hash, costing the same as a known one.
    """

    _DUMMY = b"$2b$10$e3cZJTE7hgilpkrJePEPUeVxoAPzxX01WWTnsy1gq3UQbSXuero.W"   # cost 10, matches no password

    def __init__(self, users: dict[str, str], cache_size: int = 1024) -> None:
        self.users = users
        self.cache_size = cache_size
        self._ok: OrderedDict[bytes, None] = OrderedDict()
        self._bad: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()      # guards the caches
        self._lane = threading.Lock()      # one bcrypt at a time

    @staticmethod
    def parse(header: str | None) -> tuple[str, str] | None:
        """(user, password) of a ``Basic`` Authorization header; None when absent or malformed."""
        if not header or not header.startswith("Basic "):
            return None
        try:
            user, sep, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return (user, password) if sep else None

    def _key(self, user: str, password: str) -> bytes:
        hashed = self.users.get(user, "")
        return hashlib.sha256(f"{user}\0{password}\0{hashed}".encode()).digest()

    def cached(self, user: str, password: str) -> bool | None:
        """The cached outcome; None when this (user, password) needs a bcrypt check."""
        key = self._key(user, password)
        with self._lock:
            if key in self._ok:
                self._ok.move_to_end(key)
                return True
            if key in self._bad:
                self._bad.move_to_end(key)
                return False
        return None

    def verify(self, user: str, password: str) -> bool:
        """bcrypt check (one at a time), outcome cached. bcrypt is imported by the first check: an agent without
        basic-auth users never loads it."""
        import bcrypt

        hashed = self.users.get(user)
        with self._lane:
            try:
                target = hashed.replace("$2y$", "$2b$", 1).encode() if hashed else self._DUMMY
                ok = bcrypt.checkpw(password.encode(), target) and hashed is not None
            except ValueError:
                ok = False
        key = self._key(user, password)
        with self._lock:
            cache = self._ok if ok else self._bad
            cache[key] = None
            while len(cache) > self.cache_size:
                cache.popitem(last=False)
        return ok

    def check(self, header: str | None) -> bool:
        """True when the Authorization header carries a valid user and password."""
        creds = self.parse(header)
        if creds is None:
            return False
        got = self.cached(*creds)
        return self.verify(*creds) if got is None else got


class AuthGate:
    """Who may pass: cached outcomes answer at once; uncached checks queue for the bcrypt lane (its own
    thread), at most ``waiting`` in all and ``waiting_per_ip`` from one client address (429 beyond)."""

    UNAUTHORIZED = (401, "Unauthorized\n", {"WWW-Authenticate": 'Basic realm="nodewarden"'})

    def __init__(self, users: dict[str, str], waiting: int = 8, waiting_per_ip: int = 2) -> None:
        self.auth = BasicAuth(users)
        self.max_waiting = waiting
        self.max_waiting_per_ip = waiting_per_ip
        self._waiting = 0
        self._by_ip: dict[str, int] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="http-auth")

    async def authorize(self, header: str | None, peer: str = "") -> tuple[int, str, dict[str, str]] | None:
        """None when authorized; else (status, body, headers): 401, or 429 when too many checks wait (in all,
        or from this client address). Runs on the event loop."""
        creds = self.auth.parse(header)
        if creds is None:
            return self.UNAUTHORIZED
        got = self.auth.cached(*creds)
        if got is None:
            if self._waiting >= self.max_waiting or self._by_ip.get(peer, 0) >= self.max_waiting_per_ip:
                return 429, "too many authentication attempts; retry later\n", {"Retry-After": "1"}
            self._waiting += 1
            self._by_ip[peer] = self._by_ip.get(peer, 0) + 1
            try:
                got = await asyncio.get_running_loop().run_in_executor(self._pool, self.auth.verify, *creds)
            finally:
                self._waiting -= 1
                left = self._by_ip[peer] - 1
                if left:
                    self._by_ip[peer] = left
                else:
                    del self._by_ip[peer]
        return None if got else self.UNAUTHORIZED

    def close(self) -> None:
        """Stop the bcrypt lane (checks still queued are cancelled)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
