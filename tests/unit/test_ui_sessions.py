"""The session store and the PIN guard on their own: remote sessions never
push the box's own out, a rotated token is dead, the pre-login token is
bound to its cookie, and a client in back-off is the last one forgotten
when the table of clients is full."""

from __future__ import annotations

from gateway.ui.security import PinGuard, PreLogin, Sessions, client_key


def test_remote_sessions_never_evict_the_local_ones() -> None:
    sessions = Sessions(limit=8, local_limit=2)
    kiosk = sessions.new(local=True)
    for _ in range(1000):
        sessions.new(local=False)
    assert sessions.get(kiosk.token) is kiosk
    assert sessions.count() == (1, 8)
    # Local ones are bounded among themselves: the least recently used goes.
    other = sessions.new(local=True)
    assert sessions.get(kiosk.token) is kiosk  # just used
    sessions.new(local=True)
    assert sessions.get(other.token) is None and sessions.get(kiosk.token) is kiosk


def test_rotation_kills_the_old_token_and_keeps_the_unlock() -> None:
    sessions = Sessions()
    old = sessions.new(local=False)
    old.unlocked_until = 1e12
    new = sessions.rotate(old, local=False)
    assert new.token != old.token and new.csrf != old.csrf
    assert sessions.get(old.token) is None and sessions.get(new.token) is new
    assert new.settings_unlocked


def test_prelogin_token_is_bound_to_its_cookie() -> None:
    pre = PreLogin()
    cookie = pre.new_cookie()
    token = pre.token(cookie)
    assert pre.check(cookie, token)
    assert not pre.check(pre.new_cookie(), token)
    assert not pre.check(cookie, token[:-1] + ("A" if token[-1] != "A" else "B"))
    assert not pre.check(None, token) and not pre.check(cookie, None)
    assert not PreLogin().check(cookie, token)  # another process: another key


def test_a_client_in_backoff_is_the_last_forgotten() -> None:
    guard = PinGuard(free=1, clients=3)
    locked = client_key("192.0.2.66", loopback=False)
    assert guard.attempt(locked, lambda: False).locked_now
    for n in range(10):  # many other addresses, none in back-off
        guard.attempt(client_key(f"192.0.2.{n}", loopback=False), lambda: True)
    assert guard.wait_seconds(locked) > 0
    assert guard.attempt(locked, lambda: True).ok is False  # still waiting, not checked
    assert client_key("127.0.0.1", loopback=True) == client_key("::1", loopback=True)
