"""HTTP authentication for a DICOMweb archive: basic from a credential file,
a bearer token from a file (read again when the file changes, so whatever
renews it on disk is picked up without a restart), or OAuth2 client
credentials (RFC 6749 4.4: the token cached until shortly before it
expires, fetched again once when the archive answers 401).

Secrets are read from files at the moment they are needed, kept only in
these objects, never put in a message, a log line or a repr: an error names
the file, the token URL and the HTTP status, never a value.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import httpx

from gateway.config import HttpAuthConfig
from gateway.net.tls import describe_tls_failure

MAX_SECRET_BYTES = 64 * 1024
MAX_TOKEN_ANSWER = 256 * 1024
# A token is renewed this long before the expiry its server announced, so a
# request started just before the end does not arrive with a dead token.
EXPIRY_MARGIN_S = 30.0


class AuthError(Exception):
    """Credentials could not be had (a file unreadable, the token server
    refusing); the message names where, never what."""


class HttpAuth(Protocol):
    def header(self) -> str:
        """The Authorization header's value for the next request."""
        ...

    def refresh(self) -> bool:
        """After a 401: True when there are new credentials worth one more try."""
        ...


@dataclass
class SecretFile:
    """A secret in a file, read again when the file changes (inode, size or
    modification time), stripped of surrounding white space."""

    path: Path
    _stamp: tuple[int, int, int] | None = field(default=None, repr=False)
    _value: str | None = field(default=None, repr=False)

    def _read_stamp(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise AuthError(f"credential file {self.path}: {exc.strerror}") from None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def value(self) -> str:
        stamp = self._read_stamp()
        if self._value is None or stamp != self._stamp:
            self._value = self._load()
            self._stamp = stamp
        return self._value

    def changed(self) -> bool:
        """Whether the file differs from what was last read."""
        return self._read_stamp() != self._stamp

    def _load(self) -> str:
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_SECRET_BYTES + 1)
        except OSError as exc:
            raise AuthError(f"credential file {self.path}: {exc.strerror}") from None
        if len(raw) > MAX_SECRET_BYTES:
            raise AuthError(f"credential file {self.path} is larger than 64 KiB")
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise AuthError(f"credential file {self.path} is not UTF-8 text") from None
        if not text:
            raise AuthError(f"credential file {self.path} is empty")
        if not text.isprintable():
            raise AuthError(f"credential file {self.path} holds control characters or lines")
        return text


@dataclass
class BasicAuth:
    username: str
    password: SecretFile

    def header(self) -> str:
        pair = f"{self.username}:{self.password.value()}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def refresh(self) -> bool:
        return self.password.changed()


@dataclass
class BearerFileAuth:
    token: SecretFile

    def header(self) -> str:
        value = self.token.value()
        if not value.isascii() or " " in value:
            raise AuthError(f"bearer token file {self.token.path} holds more than one token")
        return f"Bearer {value}"

    def refresh(self) -> bool:
        return self.token.changed()


@dataclass
class OAuth2ClientCredentials:
    """The token endpoint is asked with HTTP basic client authentication
    (RFC 6749 2.3.1, the one every server must support)."""

    token_url: str
    client_id: str
    secret: SecretFile
    scope: str | None
    client: Callable[[], httpx.Client]  # made when first needed, kept alive
    clock: Callable[[], float] = time.monotonic
    _token: str | None = field(default=None, repr=False)
    _expires: float = 0.0

    def header(self) -> str:
        if self._token is None or self.clock() >= self._expires:
            self._fetch()
        assert self._token is not None
        return f"Bearer {self._token}"

    def refresh(self) -> bool:
        self._token = None
        self._fetch()
        return True

    def _fetch(self) -> None:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        pair = f"{quote(self.client_id, safe='')}:{quote(self.secret.value(), safe='')}"
        headers = {
            "Authorization": "Basic " + base64.b64encode(pair.encode()).decode("ascii"),
            "Accept": "application/json",
        }
        where = f"OAuth2 token endpoint {self.token_url}"
        try:
            with self.client().stream("POST", self.token_url, data=form, headers=headers) as r:
                body = _read_bounded(r, MAX_TOKEN_ANSWER)
                status = r.status_code
        except httpx.HTTPError as exc:
            raise AuthError(f"{where}: {describe_http_error(exc)}") from None
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise AuthError(f"{where}: HTTP {status}, not a JSON token answer")
        if status != 200:
            error = answer.get("error")
            code = error if isinstance(error, str) and error.isidentifier() else "refused"
            raise AuthError(f"{where}: HTTP {status} {code}")
        token, kind = answer.get("access_token"), answer.get("token_type", "Bearer")
        if not isinstance(token, str) or not token or not token.isascii() or " " in token:
            raise AuthError(f"{where}: the answer has no usable access_token")
        if not isinstance(kind, str) or kind.lower() != "bearer":
            raise AuthError(f"{where}: token type {str(kind)[:20]!r}, not Bearer")
        lifetime = answer.get("expires_in")
        # Without expires_in the token is kept until the archive refuses it.
        seconds = float(lifetime) if isinstance(lifetime, int | float) else float("inf")
        self._token = token
        self._expires = self.clock() + max(0.0, seconds - EXPIRY_MARGIN_S)


def _read_bounded(response: httpx.Response, limit: int) -> bytes:
    out = bytearray()
    for chunk in response.iter_bytes():
        out += chunk
        if len(out) > limit:
            raise httpx.DecodingError(f"answer larger than {limit} bytes")
    return bytes(out)


def describe_http_error(exc: BaseException) -> str:
    """One plain line from whatever httpx raised (its TLS cause included)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError):  # ssl.SSLError and socket errors
            return describe_tls_failure(cause)
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text if text.isprintable() else type(exc).__name__


def auth_for(cfg: HttpAuthConfig | None, client: Callable[[], httpx.Client]) -> HttpAuth | None:
    """The configured way, or None for an archive that asks for nothing."""
    if cfg is None:
        return None
    if cfg.kind == "basic":
        assert cfg.username is not None and cfg.password_file is not None
        return BasicAuth(cfg.username, SecretFile(cfg.password_file))
    if cfg.kind == "bearer":
        assert cfg.bearer_token_file is not None
        return BearerFileAuth(SecretFile(cfg.bearer_token_file))
    assert cfg.token_url and cfg.client_id and cfg.client_secret_file
    return OAuth2ClientCredentials(
        cfg.token_url, cfg.client_id, SecretFile(cfg.client_secret_file), cfg.scope, client
    )
