"""The DICOMweb destination: STOW-RS over HTTPS (PS3.18 10.5) behind the one
destination interface, plus the archive's word that an instance is there
(QIDO-RS, Storage Commitment's equivalent) and "Test connection".

The HTTP client is httpx: well kept, typed, synchronous like the forwarder's
loop, streams a request body from an iterator with a Content-Length of our
choosing, keeps one HTTP/1.1 connection alive across requests, takes an
`ssl.SSLContext` as the only trust when one is passed (so SSL_CERT_FILE and
friends cannot override it, unlike `requests`, where REQUESTS_CA_BUNDLE
replaces a session's CA), and honours HTTPS_PROXY / NO_PROXY. Its transport
never retries a request (retries=0, and it would only retry connecting):
every resend is the forwarder's decision, made with a body read anew from
the queued files.

A claimed batch goes in requests bounded by `batch_max_objects` and
`batch_max_mb`, `POST {url}/studies/{StudyInstanceUID}` when a request holds
one study, else `POST {url}/studies`. Each answer is reconciled per instance
(gateway.send.stow_answer): stored only when the archive names it as stored.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

from gateway import __version__
from gateway.config import HttpsTLSConfig, StowDestinationConfig
from gateway.net.echo import EchoResult
from gateway.net.tls import TLSSetupError, https_context
from gateway.queue.model import Delivery
from gateway.send.cstore import FileProblem, check_queued_file
from gateway.send.destination import Confirmation, LinkDown, Outcome, Ref, Report, Result
from gateway.send.http_auth import AuthError, HttpAuth, auth_for, describe_http_error
from gateway.send.parallel import Relay, run_on_threads
from gateway.send.stow_answer import MAX_ANSWER, Answer, parse_answer, reconcile
from gateway.send.stow_body import BodyFileChanged, BodyPart, MultipartBody

log = logging.getLogger(__name__)

_UID = re.compile(r"^[0-9.]{1,64}$")
# Statuses that are about the destination, not the objects: the batch waits.
_LINK_STATUSES = {
    403: "forbidden",
    404: "no such service",
    405: "method not allowed",
    407: "proxy authentication required",
}
# Statuses that mean "not now": what was not named as stored is tried later.
_BUSY_STATUSES = {408, 425, 429}


class _Deadline(Exception):
    """The whole exchange took longer than its size allows."""


class _Broken(Exception):
    """The exchange failed after it started: whether the archive stored
    anything is unknown, so the request's objects are tried again."""


@dataclass
class Archive:
    """One DICOMweb service: the HTTPS client (up to `dest.connections`
    keep-alive connections, made when first needed; httpx's pool is
    thread-safe), its authentication and its time-outs."""

    dest: StowDestinationConfig
    _client: httpx.Client | None = field(default=None, repr=False)
    _token_client: httpx.Client | None = field(default=None, repr=False)
    auth: HttpAuth | None = field(default=None, repr=False)
    # Requests on parallel connections share one credential: it is read and
    # refreshed by one of them at a time.
    _auth_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.auth = auth_for(self.dest.http_auth, self._oauth_client)

    @property
    def label(self) -> str:
        return f"{self.dest.name} ({self.dest.url})"

    def url(self, path: str) -> str:
        return self.dest.url.rstrip("/") + path

    def _new_client(self, ssl_context: ssl.SSLContext, connections: int = 1) -> httpx.Client:
        d = self.dest
        return httpx.Client(
            verify=ssl_context,
            trust_env=True,  # HTTPS_PROXY / NO_PROXY; trust stays ours (an SSLContext)
            follow_redirects=False,
            limits=httpx.Limits(
                max_connections=connections,
                max_keepalive_connections=connections,
                keepalive_expiry=d.idle_timeout_s,
            ),
            timeout=httpx.Timeout(
                connect=d.connect_timeout_s,
                read=d.idle_timeout_s,
                write=d.idle_timeout_s,
                pool=d.idle_timeout_s,
            ),
            headers={"User-Agent": f"dicom-edge-gateway/{__version__}"},
        )

    def _context(self, tls: HttpsTLSConfig | None) -> ssl.SSLContext:
        try:
            return https_context(tls)
        except TLSSetupError as exc:
            raise LinkDown(f"{self.label}: {exc}") from None

    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = self._new_client(self._context(self.dest.tls), self.dest.connections)
        return self._client

    def _oauth_client(self) -> httpx.Client:
        if self._token_client is None:
            # The token server is trusted through `token_ca` when given (an
            # identity provider elsewhere), else as the archive is.
            cfg = self.dest.http_auth
            tls = self.dest.tls
            if cfg is not None and cfg.token_ca is not None:
                tls = HttpsTLSConfig(ca=cfg.token_ca)
            self._token_client = self._new_client(self._context(tls))
        return self._token_client

    def close(self) -> None:
        for client in (self._client, self._token_client):
            if client is not None:
                client.close()
        self._client = self._token_client = None

    def _authorization(self) -> dict[str, str]:
        if self.auth is None:
            return {}
        try:
            with self._auth_lock:
                return {"Authorization": self.auth.header()}
        except AuthError as exc:
            raise LinkDown(f"{self.label}: {exc}") from None

    @contextmanager
    def exchange(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        body: MultipartBody | None = None,
        deadline: float | None = None,
        refreshed: bool = False,
    ) -> Iterator[tuple[httpx.Response, bytes]]:
        """One request, its answer read (bounded) for whatever status; a 401
        is tried once more with fresh credentials. Raises LinkDown when the
        archive could not be reached, _Broken when the exchange broke."""
        request_headers = {**headers, **self._authorization()}
        content = None
        if body is not None:
            request_headers["Content-Type"] = body.content_type
            if not self.dest.chunked:
                request_headers["Content-Length"] = str(body.length)
            content = iter(body)  # a generator: httpx cannot replay it
        client = self.client()
        request = client.build_request(method, url, headers=request_headers, content=content)
        try:
            response = client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError) as exc:
            raise LinkDown(f"{self.label}: {describe_http_error(exc)}") from None
        except _Deadline:
            raise _Broken("the exchange took longer than its size allows") from None
        except BodyFileChanged as exc:
            raise _Broken(f"queue file changed while sent: {exc}") from None
        except (httpx.HTTPError, OSError) as exc:
            raise _Broken(describe_http_error(exc)) from None
        try:
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > MAX_ANSWER or (deadline is not None and time.monotonic() > deadline):
                    break  # the connection is dropped; what was read is judged
            if response.status_code == 401 and not refreshed and self._refresh():
                response.close()
                if body is not None:
                    body = MultipartBody(body.parts, body.check, body.boundary)
                with self.exchange(
                    method, url, headers=headers, body=body, deadline=deadline, refreshed=True
                ) as again:
                    yield again
                return
            yield response, bytes(data)
        except (httpx.HTTPError, OSError) as exc:
            raise _Broken(describe_http_error(exc)) from None
        finally:
            response.close()

    def _refresh(self) -> bool:
        if self.auth is None:
            return False
        try:
            with self._auth_lock:
                return self.auth.refresh()
        except AuthError as exc:
            raise LinkDown(f"{self.label}: {exc}") from None

    def deadline_for(self, size: int) -> float:
        d = self.dest
        return time.monotonic() + d.exchange_timeout_s + size / (d.min_rate_kb_s * 1024)


def _answer_of(response: httpx.Response, data: bytes) -> Answer:
    return parse_answer(
        response.status_code,
        data,
        response.headers.get("content-type", ""),
        response.headers.get_list("warning"),
        response.reason_phrase,
    )


def _link_refusal(label: str, answer: Answer, auth: HttpAuth | None) -> str | None:
    """A reason when the status is about the destination (the whole batch waits)."""
    status = answer.status
    if status == 401:
        if auth is None:
            return (
                f"{label}: HTTP 401: the archive asks for authentication; "
                "configure [destinations.http_auth]"
            )
        return f"{label}: HTTP 401: the archive refused our credentials"
    if status in _LINK_STATUSES:
        return f"{label}: HTTP {status} {_LINK_STATUSES[status]} ({answer.summary()})"
    if 300 <= status < 400 or status < 200:
        return f"{label}: HTTP {status}: the archive did not answer STOW-RS here (redirect?)"
    return None


@dataclass
class StowSender:
    dest: StowDestinationConfig
    # Called for every MiB of body sent (the forwarder's heartbeat: a long
    # body on a slow field link is not a stuck loop).
    progress: Callable[[], None] = lambda: None
    archive: Archive = field(init=False)

    def __post_init__(self) -> None:
        self.archive = Archive(self.dest)

    @property
    def label(self) -> str:
        return self.archive.label

    def close(self) -> None:
        self.archive.close()

    def send(self, batch: Sequence[Delivery], report: Report) -> None:
        """The batch in requests; with `dest.connections` > 1 that many are in
        flight at once, each connection taking the next request when its own
        is answered (the link broke: the rest go back as they were, for
        every connection)."""
        chunks = self._chunks(batch)
        connections = max(1, min(self.dest.connections, len(chunks)))
        todo: queue.SimpleQueue[list[Delivery]] = queue.SimpleQueue()
        for chunk in chunks:
            todo.put(chunk)
        stop = threading.Event()

        def worker(relay: Relay) -> None:
            def told(result: Result) -> None:
                relay.post(lambda: report(result))

            while not stop.is_set():
                try:
                    chunk = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    if not self._send_chunk(chunk, told):
                        stop.set()
                except BaseException:
                    stop.set()
                    raise

        # Even one connection runs on its own thread: this one goes on
        # beating while the archive takes its time to answer.
        errors = run_on_threads([worker] * connections, "stow", waiting=self.progress)
        for exc in errors:
            if isinstance(exc, LinkDown):
                raise exc
        for exc in errors:
            if exc is not None:
                raise exc

    def _chunks(self, batch: Sequence[Delivery]) -> list[list[Delivery]]:
        """Requests bounded by `batch_max_objects` and `batch_max_mb`, and at
        least as many as there are connections to keep busy (when the batch
        has that many objects)."""
        per_request = self.dest.batch_max_objects
        if self.dest.connections > 1 and len(batch) > 1:
            share = -(-len(batch) // self.dest.connections)  # ceiling
            per_request = max(1, min(per_request, share))
        limit = self.dest.batch_max_mb * 1024 * 1024
        chunks: list[list[Delivery]] = []
        chunk: list[Delivery] = []
        size = 0
        for delivery in batch:
            if chunk and (len(chunk) >= per_request or size + delivery.object.size > limit):
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append(delivery)
            size += delivery.object.size
        if chunk:
            chunks.append(chunk)
        return chunks

    def _send_chunk(self, chunk: Sequence[Delivery], report: Report) -> bool:
        """One request; False when the link broke and the round should end."""
        ready: list[Delivery] = []
        for delivery in chunk:
            try:
                check_queued_file(delivery.object)
            except FileProblem as exc:
                reason = f"queue file problem: {exc}"
                report(Result(delivery.object.id, Outcome.PERMANENT, reason))
                continue
            ready.append(delivery)
        if not ready:
            return True
        objects = [(d.object.id, d.object.sop_instance_uid) for d in ready]
        studies = {d.object.study_instance_uid for d in ready}
        study = studies.pop() if len(studies) == 1 else None
        path = f"/studies/{study}" if study and _UID.match(study) else "/studies"
        body = MultipartBody([BodyPart(d.object.path, d.object.size) for d in ready])
        deadline = self.archive.deadline_for(body.length)

        def check() -> None:
            self.progress()
            if time.monotonic() > deadline:
                raise _Deadline()

        body.check = check
        headers = {"Accept": "application/dicom+json"}
        try:
            with self.archive.exchange(
                "POST", self.archive.url(path), headers=headers, body=body, deadline=deadline
            ) as (response, data):
                answer = _answer_of(response, data)
        except _Broken as exc:
            reason = f"{self.label}: {exc} during STOW-RS"
            for object_id, _ in objects:
                report(Result(object_id, Outcome.TRANSIENT, reason))
            log.warning("%s; %d object(s) will be sent again", reason, len(objects))
            return False
        refusal = _link_refusal(self.label, answer, self.archive.auth)
        if refusal is not None:
            raise LinkDown(refusal)
        status = answer.status
        ambiguous = 400 <= status < 500 and status not in _BUSY_STATUSES
        if ambiguous and not answer.mentioned & {uid for _, uid in objects}:
            if len(ready) > 1:
                # The archive refused the request without saying which object
                # it minded: each alone, so one bad object cannot hold the rest.
                return all(self._send_chunk([d], report) for d in ready)
            why = f"{self.label}: refused: {answer.summary()}"
            report(Result(objects[0][0], Outcome.PERMANENT, why))
            return True
        results, notes = reconcile(answer, objects, self.label)
        for note in notes[:5]:
            log.info("%s: %s", self.label, note)
        if len(notes) > 5:
            log.info("%s: %d more stored with warnings", self.label, len(notes) - 5)
        for result in results:
            report(result)
        if status >= 500 or status in _BUSY_STATUSES:
            raise LinkDown(f"{self.label}: {answer.summary()}")
        return True

    # -- Storage Commitment's equivalent ---------------------------------------

    def confirm(self, study: str, refs: Sequence[Ref]) -> Confirmation:
        """Whether the archive lists each instance (QIDO-RS): the study's
        instances in one search, then each one not listed asked for alone
        (a server may cut a long list short without saying so)."""
        wanted = {uid for _, _, uid in refs}
        if not _UID.match(study):
            return Confirmation([], [(uid, "study UID unusable in a query") for uid in wanted])
        found = self._listed(f"/studies/{study}/instances", {}) & wanted
        for uid in sorted(wanted - found):
            if _UID.match(uid):
                found |= self._listed(f"/studies/{study}/instances", {"SOPInstanceUID": uid})
        missing = sorted(wanted - found)
        why = "the archive does not list it (QIDO-RS)"
        return Confirmation(sorted(found & wanted), [(uid, why) for uid in missing])

    def _listed(self, path: str, params: dict[str, str]) -> set[str]:
        query = "&".join(f"{k}={v}" for k, v in {**params, "includefield": "00080018"}.items())
        url = self.archive.url(path) + "?" + query
        deadline = self.archive.deadline_for(0)
        try:
            with self.archive.exchange(
                "GET", url, headers={"Accept": "application/dicom+json"}, deadline=deadline
            ) as (response, data):
                status = response.status_code
        except _Broken as exc:
            raise LinkDown(f"{self.label}: {exc} during QIDO-RS") from None
        if status in (204, 404):
            return set()
        if status != 200:
            answer = parse_answer(status, data, reason_phrase=response.reason_phrase)
            raise LinkDown(f"{self.label}: QIDO-RS {answer.summary()}")
        try:
            listed = json.loads(data) if data.strip() else []
        except ValueError:
            raise LinkDown(f"{self.label}: QIDO-RS answer is not DICOM JSON") from None
        out: set[str] = set()
        for item in listed if isinstance(listed, list) else []:
            value = item.get("00080018", {}).get("Value") if isinstance(item, dict) else None
            if isinstance(value, list) and value and isinstance(value[0], str):
                out.add(value[0])
        return out


def stow_echo(dest: StowDestinationConfig) -> EchoResult:
    """Test connection: an authenticated QIDO-RS search for one study, with
    the TLS version and cipher of the connection and the HTTP status."""
    started = time.monotonic()
    archive = Archive(dest)

    def result(ok: bool, detail: str) -> EchoResult:
        return EchoResult(dest.name, ok, detail, time.monotonic() - started)

    try:
        with archive.exchange(
            "GET",
            archive.url("/studies?limit=1"),
            headers={"Accept": "application/dicom+json"},
            deadline=archive.deadline_for(0),
        ) as (response, data):
            transport = _transport(response)
            answer = _answer_of(response, data)
    except LinkDown as exc:
        return result(False, str(exc))
    except _Broken as exc:
        return result(False, f"{archive.label}: {exc}")
    finally:
        archive.close()
    detail = f"{transport}, HTTP {answer.status} to QIDO-RS"
    if answer.status in (200, 204):
        return result(True, detail)
    refusal = _link_refusal(archive.label, answer, archive.auth)
    return result(False, f"{refusal or archive.label + ': ' + answer.summary()} over {transport}")


def _transport(response: httpx.Response) -> str:
    stream = response.extensions.get("network_stream")
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    if ssl_object is None:
        return "plain HTTP (no TLS)"
    cipher = ssl_object.cipher()
    return f"{ssl_object.version()} {cipher[0] if cipher else ''}".strip()
