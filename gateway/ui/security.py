"""PIN, sessions and CSRF for the touchscreen.

The PIN is stored only as an scrypt hash (a stolen config file must not hand
out the PIN, and a short PIN is cheap to brute-force without a slow hash).
Every PIN check takes one lock from the back-off test to the verdict, so
guesses sent at once cannot slip between "may I try?" and "that was wrong"
(unserialised, about 40 fitted in one lockout window). The back-off is per
client address, with the box's own screen (loopback) one client of its own:
a LAN client guessing locks out itself, never the technician at the kiosk.

Sessions live in memory (a restart logs everyone out, the safe failure) and
only for clients that may use the UI: the box's own screen, and remote clients
once logged in. An anonymous remote client gets a stateless pre-login token
(an HMAC of a random cookie) to log in with, so a flood of anonymous clients
creates nothing on the server and cannot evict anyone's session; local and
remote sessions are bounded apart, so the kiosk's is never evicted by a remote
one. Logging in always issues a new session token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
PIN_MIN, PIN_MAX = 4, 12  # what a stored hash may hold; the screen asks ui.pin_min_length
SESSION_COOKIE = "gw_session"
PRELOGIN_COOKIE = "gw_prelogin"
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
    """One client's wrong tries: after `free` of them, each further one
    doubles the wait (capped). Not locked itself: `PinGuard` holds the lock."""

    def __init__(self, free: int = 5, base: float = 30.0, cap: float = 900.0) -> None:
        self.free, self.base, self.cap = free, base, cap
        self.failures = 0
        self.locked_until = 0.0

    def wait_seconds(self) -> int:
        return max(0, int(self.locked_until - time.monotonic() + 0.999))

    def failed(self) -> None:
        self.failures += 1
        if self.failures >= self.free:
            delay = min(self.cap, self.base * 2 ** (self.failures - self.free))
            self.locked_until = time.monotonic() + delay

    def succeeded(self) -> None:
        self.failures, self.locked_until = 0, 0.0


@dataclass(frozen=True)
class PinVerdict:
    ok: bool
    wait_seconds: int = 0  # > 0 with ok False and tries_left None: refused unchecked
    tries_left: int | None = None
    locked_now: bool = False  # this failure started a wait (an audit-worthy lockout)
    failures: int = 0  # the client's wrong tries in a row so far


class PinGuard:
    """Every PIN check under one lock, each client with its own back-off.
    `clients` bounds the table; a client in back-off is the last evicted."""

    def __init__(
        self, free: int = 5, base: float = 30.0, cap: float = 900.0, clients: int = 4096
    ) -> None:
        self.free, self.base, self.cap, self.clients = free, base, cap, clients
        self._by_client: OrderedDict[str, PinLimiter] = OrderedDict()
        self._lock = threading.Lock()

    def _limiter(self, client: str) -> PinLimiter:
        limiter = self._by_client.get(client)
        if limiter is None:
            if len(self._by_client) >= self.clients:
                idle = next((k for k, v in self._by_client.items() if not v.wait_seconds()), None)
                self._by_client.pop(idle if idle is not None else next(iter(self._by_client)))
            limiter = self._by_client[client] = PinLimiter(self.free, self.base, self.cap)
        self._by_client.move_to_end(client)
        return limiter

    def attempt(self, client: str, verify: Callable[[], bool]) -> PinVerdict:
        """`verify()` runs only when `client` may try, and nobody else's
        check runs meanwhile."""
        with self._lock:
            limiter = self._limiter(client)
            wait = limiter.wait_seconds()
            if wait:
                return PinVerdict(False, wait_seconds=wait)
            if verify():
                limiter.succeeded()
                return PinVerdict(True)
            limiter.failed()
            wait = limiter.wait_seconds()
            left = max(0, limiter.free - limiter.failures)
            return PinVerdict(
                False, wait, tries_left=left, locked_now=wait > 0, failures=limiter.failures
            )

    def wait_seconds(self, client: str) -> int:
        with self._lock:
            limiter = self._by_client.get(client)
            return limiter.wait_seconds() if limiter is not None else 0


def client_key(host: str | None, loopback: bool) -> str:
    """Whose back-off a request counts against: the box's own screen is one
    client however it connects over loopback; anyone else by address."""
    return "loopback" if loopback else f"ip:{host or '?'}"


class PreLogin:
    """CSRF for an anonymous remote client without any server-side state:
    the token is an HMAC of a random cookie under a key of this process."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def new_cookie(self) -> str:
        return secrets.token_urlsafe(16)

    def token(self, cookie: str) -> str:
        mac = hmac.new(self._key, cookie.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def check(self, cookie: str | None, token: str | None) -> bool:
        if not cookie or not token or len(cookie) > 64:
            return False
        return hmac.compare_digest(self.token(cookie).encode(), token.encode())


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
    """Token → session, bounded so a client cannot fill memory with cookies;
    the box's own (loopback) sessions and remote ones are counted and evicted
    apart, so no remote client can push the kiosk's session out."""

    def __init__(self, limit: int = 256, idle: float = 12 * 3600.0, local_limit: int = 64) -> None:
        self.limit, self.idle, self.local_limit = limit, idle, local_limit
        self._by_token: dict[str, Session] = {}
        self._local: set[str] = set()
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
                self._drop(token)
                return None
            session.last_seen = now
            return session

    def _drop(self, token: str) -> None:
        self._by_token.pop(token, None)
        self._local.discard(token)

    def new(self, local: bool = True) -> Session:
        with self._lock:
            pool = [t for t in self._by_token if (t in self._local) == local]
            if len(pool) >= (self.local_limit if local else self.limit):
                self._drop(min(pool, key=lambda t: self._by_token[t].last_seen))
            session = Session(secrets.token_urlsafe(32))
            self._by_token[session.token] = session
            if local:
                self._local.add(session.token)
            return session

    def rotate(self, old: Session | None, local: bool) -> Session:
        """A new token for whoever just proved the PIN (the old one, which
        may have been seen or planted before login, stops working)."""
        if old is not None:
            with self._lock:
                self._drop(old.token)
        session = self.new(local)
        if old is not None:
            session.unlocked_until = old.unlocked_until
        return session

    def count(self) -> tuple[int, int]:
        """(local, remote) sessions held, for tests and status."""
        with self._lock:
            return len(self._local), len(self._by_token) - len(self._local)
