"""Sessions: a signed cookie, checked on every request before anything of the app runs.

The cookie holds ``name|session_epoch|expiry`` and an HMAC-SHA256 of it under the installation's random
secret (kept in the store). It survives a server restart; logging out, a password change or deactivating
the account bumps the user's ``session_epoch`` and so kills every cookie issued before. The cookie says
*who*; what a user may do is decided per handler from the user's current row (``require``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections.abc import Callable

from feedback_app.store import Store, User

COOKIE = "align_session"
SESSION_SECONDS = 12 * 3600
_CACHE_SECONDS = 2.0  # how long a checked user row is reused by the per-request check


def make_cookie(secret: bytes, user: User, now: float | None = None, max_age: int = SESSION_SECONDS) -> str:
    expires = int((now or time.time()) + max_age)
    body = f"{user.name}|{user.session_epoch}|{expires}".encode()
    sig = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return base64.urlsafe_b64encode(body).decode().rstrip("=") + "." + sig


def read_cookie(secret: bytes, value: str | None, now: float | None = None) -> tuple[str, int] | None:
    """(name, session epoch) of a well-signed, unexpired cookie; None otherwise."""
    if not value or "." not in value:
        return None
    encoded, sig = value.rsplit(".", 1)
    try:
        body = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except ValueError:
        return None
    if not hmac.compare_digest(hmac.new(secret, body, hashlib.sha256).hexdigest(), sig):
        return None
    try:
        name, epoch, expires = body.decode().rsplit("|", 2)
        if int(expires) < (now or time.time()):
            return None
        return name, int(epoch)
    except ValueError:
        return None


class Sessions:
    """Resolves a cookie to an active user, with a short cache so Gradio's many small requests stay cheap."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[str, tuple[float, User | None]] = {}
        self._lock = threading.Lock()

    def user(self, cookie: str | None) -> User | None:
        parsed = read_cookie(self.store.secret(), cookie)
        if parsed is None:
            return None
        name, epoch = parsed
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(name)
        if hit is None or now - hit[0] > _CACHE_SECONDS:
            hit = (now, self.store.get_user(name))
            with self._lock:
                self._cache[name] = hit
        user = hit[1]
        if user is None or not user.active or user.session_epoch != epoch:
            return None
        return user

    def forget(self, name: str) -> None:
        with self._lock:
            self._cache.pop(name, None)


class LoginThrottle:
    """Failed-login limits that slow guessing without letting a stranger lock a user out.

    - per (name, address): ``limit`` failures in ``window`` seconds close that pair for ``window`` seconds,
      doubling with each further failure up to ``max_lock``; the same user from another address is not
      affected, so typing someone's name with wrong passwords does not lock them out;
    - per address: ``address_limit`` failures in ``window`` close the address (one machine trying many
      names);
    - per name, from any address: past ``limit * 2`` failures in ``window`` every attempt for that name
      waits ``slow_seconds`` first (a delay, not a lock: many addresses guessing one password are slowed).

    The address is the TCP peer as the server sees it: ``X-Forwarded-For`` counts only when it comes from a
    configured trusted proxy (``align app --trusted-proxy``), which uvicorn resolves before we see the request.
    """

    def __init__(self, limit: int = 5, window: float = 300.0, address_limit: int = 20, max_lock: float = 3600.0,
                 slow_seconds: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.address_limit = address_limit
        self.max_lock = max_lock
        self.slow_seconds = slow_seconds
        self.clock = clock
        self._fails: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float, horizon: float) -> list[float]:
        recent = [t for t in self._fails.get(key, []) if now - t < horizon]
        if recent:
            self._fails[key] = recent
        else:
            self._fails.pop(key, None)
        return recent

    def blocked(self, name: str, address: str) -> float:
        """Seconds until ``name`` may try again from ``address`` (0: now)."""
        now = self.clock()
        with self._lock:
            pair = self._recent(f"pair:{name}\0{address}", now, self.max_lock)
            wait = 0.0
            in_window = [t for t in pair if now - t < self.window]
            if len(in_window) >= self.limit:
                extra = len(pair) - self.limit  # failures past the limit double the lock
                lock = min(self.window * 2 ** max(0, extra), self.max_lock)
                wait = max(wait, pair[-1] + lock - now)
            by_address = self._recent(f"ip:{address}", now, self.window)
            if len(by_address) >= self.address_limit:
                wait = max(wait, by_address[-self.address_limit] + self.window - now)
        return max(0.0, wait)

    def delay(self, name: str) -> float:
        """Seconds to wait before checking a password for ``name`` (many recent failures from anywhere)."""
        now = self.clock()
        with self._lock:
            return self.slow_seconds if len(self._recent(f"name:{name}", now, self.window)) >= 2 * self.limit else 0.0

    def failed(self, name: str, address: str) -> None:
        now = self.clock()
        with self._lock:
            for key in (f"pair:{name}\0{address}", f"ip:{address}", f"name:{name}"):
                self._fails.setdefault(key, []).append(now)

    def succeeded(self, name: str, address: str) -> None:
        with self._lock:
            self._fails.pop(f"pair:{name}\0{address}", None)
