"""The one configuration model: TOML in, validated typed settings out.

Every key of PRODUCT.md lives here, checked when the file is loaded, so a typo
or a missing certificate is reported once, at start, naming the file and the key,
instead of surfacing hours later as a failed association.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.paths import (
    default_queue_path,
    resolve_config_path,
    resolve_path_value,
    resolve_settings_path,
)

# PS3.5 6.2: AE is 16 characters of the default repertoire, no backslash or
# control characters; leading/trailing spaces are not significant, so a title
# made only of spaces is no title at all.
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


class ConfigError(Exception):
    """A configuration problem, worded for the person who edits the file."""


def _check_ae(value: str) -> str:
    if len(value) > 16:
        raise ValueError(f"AE title {value!r} is {len(value)} characters long; at most 16")
    if not _AE_RE.match(value) or not value.strip():
        raise ValueError(
            f"AE title {value!r} has illegal characters; use letters, digits, "
            "spaces and punctuation other than backslash"
        )
    return value.strip()


AETitle = Annotated[str, Field(min_length=1), AfterValidator(_check_ae)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


def _readable_file(value: Path, what: str) -> Path:
    if not value.is_file():
        raise ValueError(f"{what} {str(value)!r} does not exist")
    if not os.access(value, os.R_OK):
        raise ValueError(f"{what} {str(value)!r} is not readable")
    return value


class TLSConfig(_Model):
    """Mutual TLS: the peer is checked against `ca`; we present `cert`/`key`."""

    ca: Path
    cert: Path
    key: Path
    # A CRL (PEM) from `ca`: a peer's certificate on it is refused
    # (VERIFY_CRL_CHECK_LEAF; the CRL must be kept current by the site).
    crl: Path | None = None

    @field_validator("ca", "cert", "key")
    @classmethod
    def _exists(cls, value: Path) -> Path:
        return _readable_file(value, "certificate file")

    @field_validator("crl")
    @classmethod
    def _crl_exists(cls, value: Path | None) -> Path | None:
        return None if value is None else _readable_file(value, "CRL file")


class CodeConfig(_Model):
    """A coded entry: Code Value, Coding Scheme Designator, Code Meaning."""

    value: str = Field(min_length=1, max_length=16)
    scheme: str = Field(default="SCT", min_length=1, max_length=16)
    meaning: str = Field(min_length=1, max_length=64)


class StationConfig(_Model):
    ae_title: AETitle = "EDGE1"
    station_name: str = Field(default="EDGE-GATEWAY", max_length=16)
    institution_name: str = Field(default="", max_length=64)
    modality: str = Field(default="OT", pattern=r"^[A-Z0-9_]{1,16}$")
    # Equipment the objects name (General Equipment module).
    manufacturer: str = Field(default="dicom-edge-gateway", min_length=1, max_length=64)
    model_name: str = Field(default="dicom-edge-gateway", min_length=1, max_length=64)
    device_serial_number: str = Field(default="", max_length=64)
    # Root for the UIDs this box makes; empty: the 2.25 UUID form.
    uid_root: str = ""
    # auto: US → Ultrasound objects, any other modality → Secondary Capture.
    # video-endoscopic (modality ES) / video-photographic (XC): clips as
    # Video Endoscopic / Photographic Image, stills as Secondary Capture.
    iod: Literal[
        "auto", "secondary-capture", "ultrasound", "video-endoscopic", "video-photographic"
    ] = "auto"
    # Anatomic Region Sequence of Video Endoscopic / Photographic objects
    # (type 1C there: the station's one region, e.g. value "69695003",
    # meaning "Stomach"); required with those IODs.
    anatomic_region: CodeConfig | None = None

    @field_validator("uid_root")
    @classmethod
    def _uid_root(cls, value: str) -> str:
        from gateway.dicom.uids import validate_root

        return validate_root(value) if value else value

    @model_validator(mode="after")
    def _ultrasound_is_us(self) -> StationConfig:
        needs = {"ultrasound": "US", "video-endoscopic": "ES", "video-photographic": "XC"}
        wanted = needs.get(self.iod)
        if wanted is not None and self.modality != wanted:
            raise ValueError(f"iod {self.iod!r} needs modality {wanted!r} (got {self.modality!r})")
        return self


class CaptureConfig(_Model):
    driver: str = Field(default="testpattern", min_length=1)
    # Uncompressed by default: every SCP must accept it, while RLE and JPEG are
    # optional for a PACS (check its conformance statement first). JPEG is not the
    # default: DICOM wants 4:2:2 chroma for it, which holds the colour test
    # pattern at 33 dB PSNR whatever the quality (see README).
    compression: Literal["none", "rle", "jpeg-baseline"] = "none"
    # Clips (Record, Save last, `capture --clip`): H.264 (MPEG-4 AVC High
    # Profile, ~20× smaller than JPEG cine), HEVC, or as `compression` does.
    clip_compression: Literal["h264", "hevc", "jpeg-baseline", "rle", "none"] = "h264"
    # libjpeg quality for jpeg-baseline (luminance PSNR ≥ 40 dB on the test pattern).
    jpeg_quality: int = Field(default=90, ge=50, le=100)
    options: dict[str, Any] = Field(default_factory=dict)
    # A foot pedal / freeze button on a serial port's modem-status lines
    # (device, line, active_low, debounce_ms, long_press_ms): validated by
    # drivers.trigger's own model, like a driver's options.
    trigger: dict[str, Any] | None = None
    # The ring of recent frames behind Record's "last seconds": how far back,
    # and how much memory it may take (default: drivers.stream.default_buffer_bytes;
    # MJPEG frames are kept as JPEG, ~0.3 MB each at 1080p, raw ones are not).
    buffer_seconds: float = Field(default=10.0, gt=0, le=120)
    buffer_mb: int | None = Field(default=None, ge=16, le=16384)
    # Input bombs (`dicom-gateway import`): an image's or a video frame's size
    # from its header, a video's length and decoded size from its header, all
    # checked before anything is decoded. Device-sent images have the same
    # cap as their driver's option `max_megapixels`.
    max_image_megapixels: float = Field(default=40.0, gt=0, le=1000)
    max_video_seconds: float = Field(default=600.0, gt=0, le=86400)
    max_video_mb: int = Field(default=2048, ge=1, le=65536)


DestinationName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class DestinationConfig(_Model):
    """A DICOM peer reached over DIMSE (C-STORE for a destination)."""

    name: DestinationName
    protocol: Literal["dimse"] = "dimse"
    ae_title: AETitle
    host: str = Field(min_length=1)
    port: Port
    storage_commitment: bool = False
    tls: TLSConfig | None = None
    # Associations opened at once to this PACS for one batch, each taking
    # the next object when free (gateway/send/dimse.py): a second one gets
    # past a receiver that stores on one core. A PACS that refuses it, or
    # serves one at a time, gets one for 10 min; 1 for one that wants one.
    associations: int = Field(default=2, ge=1, le=4)

    @property
    def peer(self) -> tuple[str, str]:
        """(who, where) for audit messages: the AE title and its host."""
        return self.ae_title, self.host


class HttpsTLSConfig(_Model):
    """HTTPS to a DICOMweb archive: `ca` is the only trust for the server
    (omitted: the system's store, never the environment's); `cert`/`key` our
    client certificate when the archive asks for one (mutual TLS)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @field_validator("ca", "cert", "key")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        return None if value is None else _readable_file(value, "certificate file")

    @model_validator(mode="after")
    def _pair(self) -> HttpsTLSConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together: give both or neither")
        return self


class HttpAuthConfig(_Model):
    """At most one way to authenticate: HTTP basic (`username` and
    `password_file`), a bearer token read from `bearer_token_file` (read again
    when the file changes), or OAuth2 client credentials (`token_url`,
    `client_id`, `client_secret_file`, optional `scope`; `token_ca` when the
    token server is trusted through another CA than the archive). Secrets live
    in files, never in this file, and are never logged."""

    username: str | None = Field(default=None, min_length=1, max_length=256)
    password_file: Path | None = None
    bearer_token_file: Path | None = None
    token_url: str | None = None
    client_id: str | None = Field(default=None, min_length=1, max_length=512)
    client_secret_file: Path | None = None
    scope: str | None = Field(default=None, max_length=1024)
    token_ca: Path | None = None

    @field_validator("password_file", "bearer_token_file", "client_secret_file")
    @classmethod
    def _secret(cls, value: Path | None) -> Path | None:
        return None if value is None else _readable_file(value, "credential file")

    @field_validator("token_ca")
    @classmethod
    def _ca(cls, value: Path | None) -> Path | None:
        return None if value is None else _readable_file(value, "certificate file")

    @field_validator("token_url")
    @classmethod
    def _token_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value, allow_plain=False)

    @field_validator("username")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        if value is not None and (":" in value or not value.isprintable()):
            raise ValueError("username may not contain ':' or control characters")
        return value

    @model_validator(mode="after")
    def _one_way(self) -> HttpAuthConfig:
        basic = self.username is not None or self.password_file is not None
        bearer = self.bearer_token_file is not None
        oauth = any(
            v is not None for v in (self.token_url, self.client_id, self.client_secret_file)
        )
        if basic + bearer + oauth != 1:
            raise ValueError(
                "give exactly one way: username + password_file, bearer_token_file, "
                "or token_url + client_id + client_secret_file"
            )
        if basic and (self.username is None or self.password_file is None):
            raise ValueError("HTTP basic needs both username and password_file")
        if oauth and None in (self.token_url, self.client_id, self.client_secret_file):
            raise ValueError(
                "OAuth2 client credentials need token_url, client_id and client_secret_file"
            )
        if (self.scope is not None or self.token_ca is not None) and not oauth:
            raise ValueError("scope and token_ca belong to OAuth2 client credentials (token_url)")
        return self

    @property
    def kind(self) -> Literal["basic", "bearer", "oauth2"]:
        if self.bearer_token_file is not None:
            return "bearer"
        return "basic" if self.username is not None else "oauth2"


def _check_http_url(value: str, *, allow_plain: bool) -> str:
    """An absolute https URL (http only when allowed), with a host, and no
    user name, password, query or fragment: credentials belong in
    `[destinations.http_auth]`, where they are never logged."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{value!r} is not an https:// URL with a host")
    if parts.scheme == "http" and not allow_plain:
        raise ValueError(
            f"{value!r} is plain http: images would cross the network unencrypted; "
            "use https (plain http only with allow_plain_http = true, for a lab)"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError("the URL carries credentials; put them in [destinations.http_auth]")
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r}: the service URL takes no query or fragment")
    if port == 0 or not value.isprintable() or " " in value:
        raise ValueError(f"{value!r} is not a valid URL")
    return value


class StowDestinationConfig(_Model):
    """A DICOMweb archive reached with STOW-RS (PS3.18 10.5): `url` is the
    service root, objects go to `{url}/studies` in batches bounded by
    `batch_max_objects` and `batch_max_mb`. A request may last
    `exchange_timeout_s` plus the time its body takes at `min_rate_kb_s`; no
    byte either way for `idle_timeout_s` ends it too. With
    `storage_commitment`, the archive is asked (QIDO-RS) that each sent
    instance is there before the queue may forget it."""

    name: DestinationName
    protocol: Literal["stow-rs"]
    allow_plain_http: bool = False  # checked before `url`, which it governs
    url: str
    storage_commitment: bool = False
    tls: HttpsTLSConfig | None = None
    http_auth: HttpAuthConfig | None = None
    batch_max_objects: int = Field(default=100, ge=1, le=10000)
    batch_max_mb: int = Field(default=64, ge=1, le=65536)
    # Requests in flight at once, each on its own keep-alive connection: while
    # the archive stores one request's instances the next body is uploaded
    # (gateway/send/stow.py). 1 for an archive that wants one at a time.
    connections: int = Field(default=2, ge=1, le=4)
    # Content-Length by default (every server takes it); chunked for servers
    # or proxies that want it.
    chunked: bool = False
    connect_timeout_s: float = Field(default=10.0, gt=0, le=600)
    idle_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    exchange_timeout_s: float = Field(default=60.0, gt=0, le=86400)
    min_rate_kb_s: float = Field(default=50.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str, info: ValidationInfo) -> str:
        return _check_http_url(value, allow_plain=bool(info.data.get("allow_plain_http")))

    @model_validator(mode="after")
    def _tls_needs_https(self) -> StowDestinationConfig:
        if urlsplit(self.url).scheme == "http" and self.tls is not None:
            raise ValueError("[destinations.tls] needs an https:// url")
        return self

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def peer(self) -> tuple[str, str]:
        """(who, where) for audit messages: the service URL and its host."""
        return self.url, self.host


def _protocol(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("protocol", "dimse"))
    return str(getattr(value, "protocol", "dimse"))


# A `[[destinations]]` entry: `protocol` says which (C-STORE when omitted).
Destination = Annotated[
    Annotated[DestinationConfig, Tag("dimse")] | Annotated[StowDestinationConfig, Tag("stow-rs")],
    Discriminator(
        _protocol,
        custom_error_type="protocol",
        custom_error_message='protocol must be "dimse" or "stow-rs"',
    ),
]


class WorklistConfig(_Model):
    ae_title: AETitle
    host: str = Field(min_length=1)
    port: Port
    tls: TLSConfig | None = None
    # Cached lists older than this are dropped (a field unit's week offline fits).
    cache_days: int = Field(default=14, ge=1, le=3650)
    # Whole-query bound: a server that keeps sending pending responses is cut off.
    timeout: float = Field(default=30.0, gt=0, le=600)
    max_entries: int = Field(default=5000, ge=1, le=100000)


class MppsConfig(_Model):
    """The MPPS SCP; when the table is absent, the worklist server is used."""

    ae_title: AETitle
    host: str = Field(min_length=1)
    port: Port
    tls: TLSConfig | None = None


class QueueConfig(_Model):
    path: Path = Field(default_factory=default_queue_path)
    min_free_mb: int = Field(default=500, ge=0)
    # With Storage Commitment off, a sent object may be purged (oldest first,
    # only when space is needed) once it is this old.
    retention_days: float = Field(default=7.0, ge=0)


class ForwardingConfig(_Model):
    """Retry policy and time-outs of the forwarder (seconds)."""

    retry_base_s: float = Field(default=5.0, gt=0)
    retry_cap_s: float = Field(default=300.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    acse_timeout_s: float = Field(default=30.0, gt=0)
    dimse_timeout_s: float = Field(default=60.0, gt=0)
    network_timeout_s: float = Field(default=60.0, gt=0)
    # The most a conversion for a PACS that refuses an object's transfer
    # syntax may take (one frame at a time); an object needing more is set
    # aside with the reason, so the forwarder stays within its MemoryMax=.
    convert_memory_mb: int = Field(default=128, ge=16)
    # A video object (H.264/HEVC) for a PACS that does not accept its transfer
    # syntax: converted once to multi-frame JPEG Baseline, or (false) refused
    # with the reason.
    convert_video: bool = True


def _check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT with a port from 1 to 65535")
    return value


Listen = Annotated[str, AfterValidator(_check_listen)]


class ListenerLimitsConfig(_Model):
    """What one listening port gives a peer (gateway.net.listener)."""

    max_associations: int = Field(default=8, ge=1, le=64)
    # Connections still to send their A-ASSOCIATE-RQ; beyond, the oldest is closed.
    max_pending: int = Field(default=64, ge=1, le=1024)
    idle_timeout_s: float = Field(default=30.0, gt=0)
    association_deadline_s: float = Field(default=3600.0, gt=0)
    max_pdu_mb: float = Field(default=4.0, ge=1, le=64)
    # One received data set; a larger one aborts the association. pynetdicom
    # holds a data set in memory while it arrives (and once more while it is
    # queued): max_associations × max_object_mb × 2 is the port's memory bound.
    max_object_mb: float = Field(default=512.0, gt=0)


class PeerAllowed(_Model):
    """A peer allowed to open associations to one of our ports."""

    ae_title: AETitle
    address: str = Field(min_length=1)  # an IP address or network (CIDR)
    # With TLS: the client certificate's subject CN this AE title must present.
    certificate_cn: str | None = Field(default=None, min_length=1, max_length=64)


class CommitmentConfig(_Model):
    """Storage Commitment SCU. N-EVENT-REPORTs are taken on the N-ACTION's
    association and, with `listen`, on new associations to our own SCP port
    (TLS required there: a report makes the queue forget images)."""

    listen: Listen | None = None
    tls: TLSConfig | None = None
    handshake_timeout_s: float = Field(default=10.0, gt=0)
    wait_on_association_s: float = Field(default=5.0, ge=0)
    ask_again_after_s: float = Field(default=3600.0, gt=0)
    # How often finished studies are looked for and asked about.
    interval_s: float = Field(default=30.0, gt=0)
    # PACS allowed to send reports to `listen`; empty: each Storage
    # Commitment destination's AE title from its host's addresses.
    allowed: list[PeerAllowed] = Field(default_factory=list)
    # References one report may carry (we ask for one study at a time).
    max_references: int = Field(default=10000, ge=1)
    # A report is small (10,000 references are ~1.5 MB): no need to take more.
    limits: ListenerLimitsConfig = Field(
        default_factory=lambda: ListenerLimitsConfig(max_associations=4, max_object_mb=16)
    )

    @model_validator(mode="after")
    def _tls_when_listening(self) -> CommitmentConfig:
        if self.listen is not None and self.tls is None:
            raise ValueError(
                "listen needs [commitment.tls]: reports arriving in clear could be forged"
            )
        return self


class InboundConfig(_Model):
    """C-STORE SCP for legacy modalities on the local network (off by default)."""

    enabled: bool = False
    listen: Listen = "0.0.0.0:11112"
    ae_title: AETitle | None = None  # default: the station's AE title
    allowed: list[PeerAllowed] = Field(default_factory=list)
    # For modalities that can: TLS with client certificates checked against
    # `ca` (mutual authentication); omitted, plain TCP for legacy devices.
    tls: TLSConfig | None = None
    handshake_timeout_s: float = Field(default=10.0, gt=0)
    limits: ListenerLimitsConfig = Field(default_factory=ListenerLimitsConfig)


class UITLSConfig(_Model):
    """The UI's HTTPS certificate: the station's own (tls/gateway.pem and its
    key, `${CREDENTIALS_DIRECTORY}/gateway.key` on the appliance)."""

    cert: Path
    key: Path

    @field_validator("cert", "key")
    @classmethod
    def _exists(cls, value: Path) -> Path:
        return _readable_file(value, "certificate file")


def is_loopback_host(host: str) -> bool:
    """Whether a host (an address, "[::1]", or "localhost") is loopback."""
    import ipaddress

    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_is_loopback(listen: str) -> bool:
    """Whether HOST:PORT binds loopback only (the kiosk's own screen)."""
    return is_loopback_host(listen.rpartition(":")[0])


class UIConfig(_Model):
    listen: str = "127.0.0.1:8080"
    # scrypt hash of the settings PIN (see gateway.ui.security.hash_pin); no
    # PIN set means settings cannot be opened and remote login is refused.
    pin_hash: str | None = Field(default=None, max_length=512)
    # Shortest PIN the screen (and the provisioned credential) may set: six
    # digits by default, so the per-client back-off holds for months.
    pin_min_length: int = Field(default=6, ge=4, le=12)
    # HTTPS; required whenever `listen` is beyond loopback (PIN and cookie
    # must never cross a network in clear).
    tls: UITLSConfig | None = None
    # With `listen` beyond loopback (HTTPS), the box's own screen may keep a
    # plain-HTTP address on loopback (the kiosk unit's http://127.0.0.1:8080).
    kiosk_listen: str = ""
    # A recording stops by itself after this long, bounding memory.
    max_record_seconds: float = Field(default=30.0, gt=0, le=300)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not HOST:PORT with a port from 1 to 65535")
        return value

    @field_validator("kiosk_listen")
    @classmethod
    def _kiosk_listen(cls, value: str) -> str:
        if not value:
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not HOST:PORT with a port from 1 to 65535")
        if not listen_is_loopback(value):
            raise ValueError(f"{value!r} is not a loopback address (plain HTTP stays on the box)")
        return value

    @model_validator(mode="after")
    def _tls_beyond_loopback(self) -> UIConfig:
        if self.tls is None and not listen_is_loopback(self.listen):
            raise ValueError(
                f"listen {self.listen!r} is beyond loopback: add [ui.tls] cert and key "
                "(HTTPS), or listen on 127.0.0.1"
            )
        if self.kiosk_listen and listen_is_loopback(self.listen):
            raise ValueError("kiosk_listen is only for a listen address beyond loopback")
        return self


class MetricsConfig(_Model):
    """Prometheus `/metrics` and `/health`; empty `listen` (the default) turns them off.

    The appliance runs two services from one configuration: `listen` is
    served by the process that captures (or by `run` whole), and the
    forwarder's own process (`run --only forwarder`) serves
    `forwarder_listen` when set — else the two would race for one port at
    every boot and the loser would log a bind error."""

    listen: str = ""
    forwarder_listen: str = ""

    @field_validator("listen", "forwarder_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if not value:
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not HOST:PORT with a port from 1 to 65535")
        return value


class AuditCollectorConfig(_Model):
    """A remote syslog collector over TLS (RFC 5425), mutual auth like the PACS."""

    host: str = Field(min_length=1)
    port: Port = 6514
    tls: TLSConfig


class AuditConfig(_Model):
    collector: AuditCollectorConfig | None = None


class WatchdogConfig(_Model):
    """A loop that has not reported for `stale_after` seconds is stuck: the
    watchdog ping is withheld so systemd restarts the service."""

    stale_after: float = Field(default=120.0, gt=0)


class CertificatesConfig(_Model):
    warn_days: int = Field(default=30, ge=1)
    # Peers' certificates are fetched with a TLS handshake of our own; wait a
    # while after start so a restart loop does not hammer the PACS.
    peer_probe_delay: float = Field(default=300.0, ge=0)


class GatewayConfig(_Model):
    station: StationConfig = Field(default_factory=StationConfig)
    capture: CaptureConfig = Field(default_factory=CaptureConfig)
    destinations: list[Destination] = Field(default_factory=list)
    worklist: WorklistConfig | None = None
    mpps: MppsConfig | None = None
    queue: QueueConfig = Field(default_factory=QueueConfig)
    ui: UIConfig = Field(default_factory=UIConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    watchdog: WatchdogConfig = Field(default_factory=WatchdogConfig)
    certificates: CertificatesConfig = Field(default_factory=CertificatesConfig)
    forwarding: ForwardingConfig = Field(default_factory=ForwardingConfig)
    commitment: CommitmentConfig = Field(default_factory=CommitmentConfig)
    inbound: InboundConfig = Field(default_factory=InboundConfig)

    @model_validator(mode="after")
    def _unique_names(self) -> GatewayConfig:
        seen: set[str] = set()
        for dest in self.destinations:
            if dest.name in seen:
                raise ValueError(f"destination name {dest.name!r} is used twice")
            seen.add(dest.name)
        return self

    def destination(self, name: str) -> Destination:
        for dest in self.destinations:
            if dest.name == name:
                return dest
        known = ", ".join(d.name for d in self.destinations) or "none configured"
        raise ConfigError(f"no destination named {name!r} ({known})")


_PROTOCOL_TAGS = ("dimse", "stow-rs")  # a destination's union tag, not a key


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe(err: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    msg = str(err["msg"])
    msg = msg.removeprefix("Value error, ")
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{msg} (got {err.get('input')!r})"
    return msg


def format_validation_error(source: str, exc: ValidationError) -> str:
    """One line per problem: `FILE: KEY: PROBLEM`."""
    lines = []
    for err in exc.errors():
        loc = tuple(
            p
            for p in err["loc"]
            if not (isinstance(p, str) and (p.startswith("function-") or p in _PROTOCOL_TAGS))
        )
        lines.append(f"{source}: {_location(loc)}: {_describe(err)}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "<config>") -> GatewayConfig:
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None


def load_config(path: str | os.PathLike[str] | None = None) -> GatewayConfig:
    """Load and validate; with no file anywhere, the built-in demo defaults."""
    resolved = resolve_config_path(path)
    if resolved is None:
        return GatewayConfig()
    try:
        raw = resolved.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{resolved}: configuration file does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{resolved}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{resolved}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{resolved}: TOML syntax error: {exc}") from None
    overlay = resolve_settings_path(resolved)
    if overlay is not None:
        apply_settings(data, read_settings(overlay))
    base = resolved.parent
    _resolve_relative_paths(data, base)
    return parse_config(data, str(resolved))


# The sections the touchscreen edits; on the appliance they are saved apart
# from gateway.toml (read-only there) and laid over it when loading.
SETTINGS_SECTIONS = ("destinations", "worklist", "capture")
_CLEARED = "cleared"  # sections the screen removed (TOML has no null)


def read_settings(path: Path) -> dict[str, Any]:
    """The screen's saved settings; an absent file is no change."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {*SETTINGS_SECTIONS, _CLEARED})
    if unknown:
        raise ConfigError(f"{path}: {', '.join(unknown)}: not a section the screen saves")
    return data


def apply_settings(data: dict[str, Any], settings: dict[str, Any]) -> None:
    """Lay the screen's sections over the file's, replacing each one whole."""
    for key in SETTINGS_SECTIONS:
        if key in settings:
            data[key] = settings[key]
    cleared = settings.get(_CLEARED, [])
    for key in cleared if isinstance(cleared, list) else []:
        if key in SETTINGS_SECTIONS:
            data.pop(key, None)


def settings_with_change(settings: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """The saved settings after the screen set (or, with None, removed) `key`."""
    out = {k: v for k, v in settings.items() if k != _CLEARED}
    cleared = [c for c in settings.get(_CLEARED, []) if c != key]
    if value is None:
        out.pop(key, None)
        cleared.append(key)
    else:
        out[key] = value
    if cleared:
        out[_CLEARED] = cleared
    return out


def config_warnings(config: GatewayConfig) -> list[str]:
    """What `config check` warns about without refusing: patient data that
    would travel in clear, and private keys others could read."""
    warnings = [
        f"{peer}: no TLS; patient data would cross the network in clear"
        for peer in plaintext_peers(config)
    ]
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    keys = {t.key for t in _tls_tables(config)}
    for key in sorted(keys):
        if creds and key.is_relative_to(creds):
            continue
        try:
            mode = key.stat().st_mode
        except OSError:
            continue
        if mode & 0o077:
            warnings.append(
                f"{key}: private key is mode {mode & 0o777:04o}; make it 0600 and hand it "
                "over with LoadCredential="
            )
    return warnings


def _tls_tables(config: GatewayConfig) -> list[Any]:
    found: list[Any] = [d.tls for d in config.destinations if isinstance(d, DestinationConfig)]
    found += [config.worklist and config.worklist.tls, config.mpps and config.mpps.tls]
    found += [config.inbound.tls, config.ui.tls, config.commitment.tls]
    found += [config.audit.collector and config.audit.collector.tls]
    return [t for t in found if t is not None and isinstance(getattr(t, "key", None), Path)]


def plaintext_peers(config: GatewayConfig) -> list[str]:
    """Every peer patient data would reach without TLS, for `config check`."""
    found = [
        f"destination {d.name!r} ({d.host}:{d.port})"
        for d in config.destinations
        if isinstance(d, DestinationConfig) and d.tls is None
    ]
    found += [
        f"destination {d.name!r} ({d.url})"
        for d in config.destinations
        if not isinstance(d, DestinationConfig) and urlsplit(str(d.url)).scheme != "https"
    ]
    if config.worklist is not None and config.worklist.tls is None:
        found.append(f"worklist {config.worklist.host}:{config.worklist.port}")
    if config.mpps is not None and config.mpps.tls is None:
        found.append(f"mpps {config.mpps.host}:{config.mpps.port}")
    if config.inbound.enabled and config.inbound.tls is None:
        found.append(f"inbound listener {config.inbound.listen}")
    return found


_TLS_FILES = ("ca", "cert", "key", "crl")


def _resolve_relative_paths(data: dict[str, Any], base: Path) -> None:
    """Certificate and queue paths are relative to the configuration file, so a
    config directory can be moved or copied whole."""

    def fix(table: Any, keys: tuple[str, ...]) -> None:
        if not isinstance(table, dict):
            return
        for key in keys:
            value = table.get(key)
            if isinstance(value, str):
                table[key] = resolve_path_value(value, base)

    dests = data.get("destinations")
    if isinstance(dests, list):
        for dest in dests:
            if isinstance(dest, dict):
                fix(dest.get("tls"), _TLS_FILES)
                fix(
                    dest.get("http_auth"),
                    ("password_file", "bearer_token_file", "client_secret_file", "token_ca"),
                )
    worklist = data.get("worklist")
    if isinstance(worklist, dict):
        fix(worklist.get("tls"), _TLS_FILES)
    mpps = data.get("mpps")
    if isinstance(mpps, dict):
        fix(mpps.get("tls"), _TLS_FILES)
    fix(data.get("queue"), ("path",))
    audit = data.get("audit")
    if isinstance(audit, dict) and isinstance(audit.get("collector"), dict):
        fix(audit["collector"].get("tls"), _TLS_FILES)
    for section in ("commitment", "inbound", "ui"):
        table = data.get(section)
        if isinstance(table, dict):
            fix(table.get("tls"), _TLS_FILES)


def mpps_peer(config: GatewayConfig) -> DestinationConfig | None:
    """`[mpps]` when configured, else the worklist server (one RIS does both)."""
    peer = config.mpps or config.worklist
    if peer is None:
        return None
    return DestinationConfig(
        name="mpps", ae_title=peer.ae_title, host=peer.host, port=peer.port, tls=peer.tls
    )
