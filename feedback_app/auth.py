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
from dataclasses import dataclass

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


@dataclass
class LoginThrottle:
    """At most ``limit`` failed logins per name (and per client address) in ``window`` seconds."""

    limit: int = 5
    window: float = 300.0

    def __post_init__(self) -> None:
        self._fails: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, *keys: str) -> bool:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                recent = [t for t in self._fails.get(key, []) if now - t < self.window]
                self._fails[key] = recent
                if len(recent) >= self.limit:
                    return True
        return False

    def failed(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._fails.setdefault(key, []).append(time.monotonic())

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._fails.pop(key, None)
