"""PIN, sessions and CSRF for the touchscreen.

The PIN is stored only as an scrypt hash (a stolen config file must not hand
out the PIN, and a 4–8 digit PIN is cheap to brute-force without a slow hash).
Wrong PINs are rate-limited per box, not per client, because the attacker we
care about is someone at the screen trying numbers. Sessions live in memory:
a restart logs everyone out, which is the safe failure.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
PIN_MIN, PIN_MAX = 4, 12  # what a stored hash may hold; the screen asks ui.pin_min_length
SESSION_COOKIE = "gw_session"
CSRF_HEADER = "x-csrf-token"
UNLOCK_SECONDS = 300.0


class PinError(ValueError):
    """A PIN that cannot be used, said plainly."""


def check_pin_format(pin: str, minimum: int = PIN_MIN) -> str:
    if not pin.isdigit() or not max(PIN_MIN, minimum) <= len(pin) <= PIN_MAX:
        raise PinError(f"the PIN must be {max(PIN_MIN, minimum)} to {PIN_MAX} digits")
    return pin


def hash_pin(pin: str) -> str:
    """`scrypt$N$r$p$salt$hash`, all that is needed to verify later."""
    check_pin_format(pin)
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(pin.encode(), salt=salt, dklen=32, **_SCRYPT)
    enc = base64.b64encode
    return (
        f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}$"
        f"{enc(salt).decode()}${enc(digest).decode()}"
    )


def verify_pin(pin: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            pin.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


class PinLimiter:
    """After `free` wrong tries, each further one doubles the wait (capped)."""

    def __init__(self, free: int = 5, base: float = 30.0, cap: float = 900.0) -> None:
        self.free, self.base, self.cap = free, base, cap
        self.failures = 0
        self.locked_until = 0.0
        self._lock = threading.Lock()

    def wait_seconds(self) -> int:
        with self._lock:
            return max(0, int(self.locked_until - time.monotonic() + 0.999))

    def failed(self) -> None:
        with self._lock:
            self.failures += 1
            if self.failures >= self.free:
                delay = min(self.cap, self.base * 2 ** (self.failures - self.free))
                self.locked_until = time.monotonic() + delay

    def succeeded(self) -> None:
        with self._lock:
            self.failures, self.locked_until = 0, 0.0


@dataclass
class Session:
    token: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    logged_in: bool = False
    unlocked_until: float = 0.0
    last_seen: float = field(default_factory=time.monotonic)

    @property
    def settings_unlocked(self) -> bool:
        return time.monotonic() < self.unlocked_until

    def check_csrf(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


class Sessions:
    """Token → session, bounded so a client cannot fill memory with cookies."""

    def __init__(self, limit: int = 256, idle: float = 12 * 3600.0) -> None:
        self.limit, self.idle = limit, idle
        self._by_token: dict[str, Session] = {}
        self._lock = threading.Lock()

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        with self._lock:
            session = self._by_token.get(token)
            if session is None:
                return None
            now = time.monotonic()
            if now - session.last_seen > self.idle:
                del self._by_token[token]
                return None
            session.last_seen = now
            return session

    def new(self) -> Session:
        with self._lock:
            if len(self._by_token) >= self.limit:
                oldest = min(self._by_token.values(), key=lambda s: s.last_seen)
                del self._by_token[oldest.token]
            session = Session(secrets.token_urlsafe(32))
            self._by_token[session.token] = session
            return session
