"""`dicom-gateway`: the one command line. Exit 0 on success; otherwise a
one-line reason on stderr and a non-zero status, never a traceback for a
problem the user can fix."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.paths import resolve_config_path

# Nothing more at start-up: `queue flush` and `import` handed to the running
# service load no logging and no DICOM stack (bench_forward's hand-over
# figure starts a Python for each). The rest is imported where it is needed.
if TYPE_CHECKING:
    from drivers.base import Driver, Frame
    from gateway.acquire.exam import Exam
    from gateway.acquire.station import Station
    from gateway.acquire.subject import Subject
    from gateway.config import GatewayConfig
    from gateway.queue.outbox import Outbox

EXIT_FAILURE = 1
EXIT_USAGE = 2
# `capture` gives up on a device after this many unusable inputs in a row.
MAX_REJECTED_IN_A_ROW = 5
# `capture --clip`: as long as a recording on the screen may be (ui.max_record_seconds' cap).
MAX_CLIP_SECONDS = 300.0


def _user_errors() -> tuple[type[Exception], ...]:
    """Imported only when something failed: `queue flush` must not pay for
    numpy, OpenCV and pynetdicom at start-up (see bench_forward)."""
    from drivers import DriverError
    from gateway.config import ConfigError
    from gateway.dicom.modules import ModuleError
    from gateway.dicom.pixels import PixelError
    from gateway.net.association import PeerError
    from gateway.net.tls import TLSSetupError
    from gateway.queue.db import QueueError

    return (
        ConfigError,
        DriverError,
        QueueError,
        TLSSetupError,
        PeerError,
        ModuleError,
        PixelError,
    )


class CommandError(Exception):
    """A failure to report as one line, with an exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.status = status


class _Formatter(argparse.HelpFormatter):
    """argparse's own, sized the same way without importing shutil (and with
    it bz2 and lzma) at every command's start: the width serves --help only."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        if kwargs.get("width") is None:
            kwargs["width"] = _columns() - 2
        super().__init__(prog, **kwargs)


def _columns() -> int:
    """shutil.get_terminal_size's answer: $COLUMNS, the terminal, or 80."""
    with contextlib.suppress(KeyError, ValueError):
        if (columns := int(os.environ["COLUMNS"])) > 0:
            return columns
    with contextlib.suppress(AttributeError, ValueError, OSError):
        if (
            sys.__stdout__ is not None
            and (columns := os.get_terminal_size(sys.__stdout__.fileno()).columns) > 0
        ):
            return columns
    return 80


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:  # one line, like every other error
        raise CommandError(f"{self.prog}: {message}", EXIT_USAGE)


def _emit(args: argparse.Namespace, data: Any, text: Callable[[], str]) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text())


def _outbox(config: GatewayConfig) -> Outbox:
    from gateway.queue.outbox import outbox_for

    return outbox_for(config)


# -- subcommands ---------------------------------------------------------------


def cmd_alarm(args: argparse.Namespace, config: GatewayConfig) -> int:
    """`alarm unit-failed UNIT`: run by systemd (dicom-gateway-alarm@.service,
    the services' OnFailure=) when a unit gave up restarting. The alarm is
    logged, kept in the queue database (the `dicom_gateway_alarms` metric,
    `queue stats`) and audited."""
    import logging

    from gateway.ops import audit
    from gateway.queue.alarms import ALARM_UNIT_FAILED, raise_alarm

    message = f"{args.unit} failed and systemd gave up restarting it"
    logging.getLogger("gateway.alarm").error("%s", message)
    raise_alarm(config.queue.path, ALARM_UNIT_FAILED, message)
    trail = audit.AuditTrail(config, config.queue.path)
    try:
        trail.alarm(message)
    finally:
        trail.close()
    print(f"alarm raised: {message}")
    return 0


def cmd_config(args: argparse.Namespace, config: GatewayConfig) -> int:
    from drivers import DriverError, create_driver
    from gateway.config import ConfigError

    source = resolve_config_path(args.config) or "built-in defaults"
    # Driver options are validated by the driver's own model, reported the same way.
    try:
        create_driver(config.capture.driver, config.capture.options)
        if config.capture.trigger is not None:
            from drivers.trigger import PedalTrigger

            PedalTrigger.from_options(config.capture.trigger, lambda _event: None)
    except DriverError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if args.action == "show":
        print(json.dumps(config.model_dump(mode="json"), indent=2))
    else:
        from gateway.config import config_warnings

        warnings = config_warnings(config)
        for warning in warnings:
            print(f"dicom-gateway: warning: {warning}", file=sys.stderr)
        _emit(
            args,
            {"ok": True, "source": str(source), "warnings": warnings},
            lambda: f"{source}: configuration OK",
        )
    return 0


def cmd_echo(args: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.send.protocols import echo_destination

    dests = list(config.destinations) if not args.name else []
    if args.name and args.name not in ("worklist", "mpps"):
        dests = [config.destination(args.name)]
    if config.worklist and (not args.name or args.name == "worklist"):
        from gateway.config import DestinationConfig

        wl = config.worklist
        wl_dest = DestinationConfig(
            name="worklist", ae_title=wl.ae_title, host=wl.host, port=wl.port, tls=wl.tls
        )
        dests = [d for d in dests if d.name != "worklist"] + [wl_dest]
    if config.mpps and (not args.name or args.name == "mpps"):
        from gateway.config import mpps_peer

        mpps_dest = mpps_peer(config)
        if mpps_dest is not None:
            dests = [d for d in dests if d.name != "mpps"] + [mpps_dest]
    if not dests:
        raise CommandError("no peers configured: add a [[destinations]] table")
    results = [echo_destination(config.station.ae_title, d) for d in dests]
    _emit(
        args,
        [r.as_json() for r in results],
        lambda: "\n".join(
            f"{r.name}: {'OK' if r.ok else 'FAILED'} — {r.detail} ({r.seconds * 1000:.0f} ms)"
            for r in results
        ),
    )
    failed = [r.name for r in results if not r.ok]
    if failed and not args.json:
        print(f"dicom-gateway: echo failed for {', '.join(failed)}", file=sys.stderr)
    return EXIT_FAILURE if failed else 0


def cmd_worklist(args: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.ris.jsonform import result_to_dict
    from gateway.ris.model import WorklistQuery
    from gateway.ris.worklist import WorklistError, WorklistService, parse_date_option

    try:
        date_from, date_to = parse_date_option(args.date)
    except WorklistError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    station = args.station if args.station is not None else config.station.ae_title
    query = WorklistQuery(
        date_from=date_from,
        date_to=date_to,
        modality=args.modality,
        station_ae_title=None if station.lower() == "any" else station,
        patient_name=args.patient_name,
        patient_id=args.patient_id,
        accession_number=args.accession,
    )
    with WorklistService(config) as service:
        result = service.query(query, offline=args.offline)
    if args.json:
        print(json.dumps(result_to_dict(result), indent=2, ensure_ascii=False))
    else:
        print(_worklist_text(result))
    if result.error and result.cached_at is None:
        print(f"dicom-gateway: {result.error}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


def _worklist_text(result: Any) -> str:
    lines = []
    if result.cached_at is not None:
        why = f" — {result.error}" if result.error else ""
        lines.append(f"cached at {result.cached_at:%Y-%m-%d %H:%M}{why}")
    for e in result.entries:
        when = f"{e.scheduled_start:%Y-%m-%d %H:%M}" if e.scheduled_start else "(no time)"
        mark = " [performed]" if e.performed else ""
        warn = f"  ! {'; '.join(e.warnings)}" if e.warnings else ""
        lines.append(
            f"{when}  {e.modality:<3} {e.order.accession_number:<16} {e.patient.id:<12} "
            f"{e.patient.name}  {e.order.requested_procedure_description}"
            f"{'  @' + e.location if e.location else ''}{mark}{warn}"
        )
    if not result.entries:
        lines.append("no worklist entries")
    lines.extend(f"warning: {w}" for w in result.warnings)
    return "\n".join(lines)


def _exam_subject(args: argparse.Namespace, config: GatewayConfig, verb: str) -> Subject:
    """Who the images belong to (gateway/subject.py), from the command line."""
    from gateway.acquire.subject import SubjectError, exam_subject

    try:
        subject = exam_subject(config, verb, **_subject_options(args))
    except SubjectError as exc:
        raise CommandError(str(exc), EXIT_USAGE if exc.usage else EXIT_FAILURE) from None
    if subject.note:
        print(f"dicom-gateway: {subject.note}", file=sys.stderr)
    return subject


def _subject_options(args: argparse.Namespace) -> dict[str, str | None]:
    return {
        "accession": args.accession,
        "patient_id": args.patient_id,
        "patient_name": args.patient_name,
        "birth_date": args.birth_date,
        "sex": args.sex,
    }


@contextlib.contextmanager
def _headless_exam(
    config: GatewayConfig, subject: Subject, driver: Driver
) -> Iterator[tuple[Station, Exam]]:
    """The exam of `capture` (stills or a clip) on the configured driver:
    what was captured stays queued whatever happens; the RIS hears the exam
    was cut short, or (at the end) that it was completed."""
    from gateway.acquire.station import Station

    with _outbox(config) as outbox:
        outbox.check_space()
        with (
            Station(config, outbox, driver.source, review=False) as station,
            station.exam(subject, "capture") as exam,
            driver,
        ):
            yield station, exam


def cmd_capture(args: argparse.Namespace, config: GatewayConfig) -> int:
    from drivers import create_driver

    subject = _exam_subject(args, config, "capture")
    driver = create_driver(config.capture.driver, config.capture.options)
    in_a_row = 0

    def rejected(exc: Exception) -> None:
        """A failed transfer is said and the device waited on again; only
        a device that keeps failing ends the command."""
        nonlocal in_a_row
        in_a_row += 1
        if in_a_row >= MAX_REJECTED_IN_A_ROW:
            raise CommandError(f"{exc} ({in_a_row} inputs in a row could not be used)")
        print(f"dicom-gateway: warning: {exc}; waiting for the next", file=sys.stderr, flush=True)

    if args.clip is not None:
        return _capture_clip(args, config, subject, driver, rejected)
    captured: list[dict[str, Any]] = []
    with _headless_exam(config, subject, driver) as (station, exam):
        for frame in driver.frames(args.frames, rejected):
            in_a_row = 0
            queued = station.exams.capture(exam, frame)
            captured.append(
                {
                    "id": queued.id,
                    "sop_instance_uid": queued.sop_instance_uid,
                    "path": str(queued.path),
                }
            )
            if not args.json:
                print(
                    f"captured {len(captured)}/{args.frames}: queue object {queued.id} "
                    f"({queued.sop_instance_uid})",
                    flush=True,
                )
    if args.json:
        print(
            json.dumps(
                {
                    "study_instance_uid": exam.study.instance_uid,
                    "accession_number": exam.study.accession_number,
                    "captured": captured,
                },
                indent=2,
            )
        )
    return 0


def _capture_clip(
    args: argparse.Namespace,
    config: GatewayConfig,
    subject: Subject,
    driver: Driver,
    rejected: Callable[[Exception], None],
) -> int:
    """`capture --clip SECONDS`: one clip of that long from the driver, as
    `capture.clip_compression` says (H.264 encoded while it is read)."""
    from gateway.acquire.capture import DEFAULT_CLIP_FPS, ClipWriter

    with _headless_exam(config, subject, driver) as (station, exam):
        codec = station.capturer.clip_codec
        # The driver's rate where it has one (the H.264 level depends on it).
        fps = getattr(driver.options, "fps", None) or DEFAULT_CLIP_FPS
        writer = ClipWriter(codec, float(fps)) if codec is not None else None
        frames: list[Frame] = []
        first: float | None = None
        try:
            for frame in driver.frames(None, rejected):
                first = frame.timestamp if first is None else first
                if frame.timestamp - first >= args.clip:
                    break
                if writer is not None:
                    writer.add(frame)
                else:
                    frames.append(frame)
            if writer is not None:
                queued = station.exams.capture_recorded(exam, writer)
            else:
                queued = station.exams.capture_clip(exam, frames)
        finally:
            if writer is not None:
                writer.close()
    count = len(writer.timestamps) if writer is not None else len(frames)
    how = writer.encoder if writer is not None else config.capture.clip_compression
    if args.json:
        print(
            json.dumps(
                {
                    "study_instance_uid": exam.study.instance_uid,
                    "accession_number": exam.study.accession_number,
                    "captured": [
                        {
                            "id": queued.id,
                            "sop_instance_uid": queued.sop_instance_uid,
                            "path": str(queued.path),
                            "frames": count,
                            "encoder": how,
                        }
                    ],
                },
                indent=2,
            )
        )
    else:
        print(
            f"captured a clip of {count} frames ({how}): queue object {queued.id} "
            f"({queued.sop_instance_uid})",
            flush=True,
        )
    return 0


def cmd_import(args: argparse.Namespace, config: GatewayConfig) -> int:
    """In this process; `main` first offers the files to the running service."""
    from gateway.acquire.importer import ImportFileError, import_exam
    from gateway.app.control import print_result, show_progress

    subject = _exam_subject(args, config, "import")
    progress = not args.json and sys.stderr.isatty()
    with _outbox(config) as outbox:
        try:
            result = import_exam(
                config,
                outbox,
                subject,
                [Path(p) for p in args.paths],
                show_progress if progress else None,
            )
        except ImportFileError as exc:
            if progress:
                print(file=sys.stderr)
            raise CommandError(str(exc)) from None
    print_result(result, args.json)
    return 0


def _service_answer(handed: tuple[int, str | None] | None) -> int | None:
    """The running service's answer to a handed-over command: its exit
    status, its error said on stderr; None when no service took it."""
    if handed is None:
        return None
    status, error = handed
    if error:
        print(f"dicom-gateway: {error}", file=sys.stderr)
    return status


def _import_via_service(args: argparse.Namespace) -> int | None:
    from gateway.app.control import import_via_service
    from gateway.paths import queue_path_of

    queue = queue_path_of(resolve_config_path(args.config))
    handed = import_via_service(queue, args.paths, _subject_options(args), args.json)
    return _service_answer(handed)


def cmd_queue(args: argparse.Namespace, config: GatewayConfig) -> int:
    with _outbox(config) as outbox:
        action = args.action or "list"
        if action == "list":
            rows = [d.as_json() for d in outbox.deliveries()]
            _emit(
                args,
                rows,
                lambda: (
                    "\n".join(
                        f"{r['id']:>6} {r['state']:<10} {r['destination']:<12} "
                        f"{r['sop_instance_uid']}"
                        + (f"  ({r['last_error']})" if r["last_error"] else "")
                        for r in rows
                    )
                    or "queue is empty"
                ),
            )
        elif action == "stats":
            stats: dict[str, Any] = dict(outbox.stats())
            mpps = _mpps_counts(config)
            if mpps is not None:
                stats[mpps[0]] = mpps[1]
            alarms: dict[str, int] = {}
            for kind, _message, _at in outbox.alarms():
                alarms[kind] = alarms.get(kind, 0) + 1
            if alarms:
                stats["alarms"] = alarms
            _emit(
                args,
                stats,
                lambda: (
                    "\n".join(
                        f"{name}: " + ", ".join(f"{k}={v}" for k, v in s.items())
                        for name, s in stats.items()
                    )
                    or "no destinations"
                ),
            )
        elif action == "show":
            if args.id is None:
                raise CommandError("queue show needs an object ID", EXIT_USAGE)
            rows = [d.as_json() for d in outbox.deliveries(object_id=args.id)]
            obj = outbox.get(args.id)
            if obj is None:
                raise CommandError(f"no queued object with ID {args.id}")
            _emit(
                args,
                {"object": {**obj.__dict__, "path": str(obj.path)}, "deliveries": rows},
                lambda: json.dumps(
                    {"object": {**obj.__dict__, "path": str(obj.path)}, "deliveries": rows},
                    indent=2,
                    default=str,
                ),
            )
        elif action == "retry":
            if args.id is None and not args.all:
                raise CommandError("queue retry needs an object ID or --all", EXIT_USAGE)
            count = outbox.retry(None if args.all else args.id)
            _emit(args, {"retried": count}, lambda: f"{count} delivery(ies) due now")
        elif action == "flush":
            return _flush(args, config, outbox)
    return 0


def _mpps_counts(config: GatewayConfig) -> tuple[str, dict[str, int]] | None:
    """MPPS messages to the RIS, beside the destinations in `queue stats`
    ("mpps:AE"; a colon never appears in a destination's name)."""
    from gateway.config import mpps_peer
    from gateway.queue.messages import MppsQueue

    peer = mpps_peer(config)
    queue = MppsQueue(config.queue.path)
    try:
        counts = queue.counts()
    finally:
        queue.close()
    if peer is None and not any(counts.values()):
        return None
    return f"mpps:{peer.ae_title if peer else '?'}", counts


def _flush(args: argparse.Namespace, config: GatewayConfig, outbox: Outbox) -> int:
    """In this process; `main` first hands the flush to the running service."""
    from gateway.app.control import flush_outcome
    from gateway.send.forwarder import Forwarder

    if not config.destinations:
        raise CommandError("no destinations configured: nothing to flush to")
    outbox.recover()
    forwarder = Forwarder.from_config(outbox, config)
    status, error = flush_outcome(forwarder.flush_summary(args.timeout), args.json)
    if error:
        print(f"dicom-gateway: {error}", file=sys.stderr)
    return status


def _flush_via_service(args: argparse.Namespace) -> int | None:
    """The running service's forwarder sends (it has the stack loaded and the
    association's peer warm); this process loads neither pydantic nor the
    DICOM stack (tests/integration/test_flush_service.py)."""
    from gateway.app.control import flush_via_service
    from gateway.paths import queue_path_of

    queue = queue_path_of(resolve_config_path(args.config))
    handed = flush_via_service(queue, args.timeout, args.json)
    return _service_answer(handed)


def cmd_run(args: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.app.service import run

    return run(config, only=args.only, config_path=resolve_config_path(args.config))


def cmd_export(args: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.ops.export import ExportError, Progress, export, select

    try:
        with _outbox(config) as outbox:
            objects = select(outbox, exam=args.exam, pending=args.pending)
            report = export(objects, Path(args.to), None if args.json else Progress(len(objects)))
    except ExportError as exc:
        raise CommandError(str(exc)) from None
    _emit(
        args,
        {
            "directory": str(report.directory),
            "exported": report.exported,
            "skipped": report.skipped,
            "bytes": report.bytes,
        },
        lambda: (
            f"exported {report.exported} object(s) to {report.directory} "
            f"({report.bytes // 1024} KiB); they stay queued until the PACS has them"
        ),
    )
    for reason in report.skipped:
        print(f"dicom-gateway: skipped {reason}", file=sys.stderr)
    return EXIT_FAILURE if report.skipped else 0


def _parts(value: str) -> list[str]:
    """`--only capture,ui`: the split units run more than one part."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    bad = [p for p in parts if p not in ("capture", "forwarder", "ui")]
    if not parts or bad:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {value!r} (choose from capture, forwarder, ui, comma-separated)"
        )
    return parts


def cmd_demo(args: argparse.Namespace, config: GatewayConfig) -> int:
    import logging

    from gateway.app.demo import run_demo

    if not args.verbose:  # the demo narrates; the service's INFO log would drown it
        logging.getLogger().setLevel(logging.WARNING)

    return run_demo(frames=args.frames)


# -- parser ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    # Accepted after the subcommand too; SUPPRESS keeps a later default from
    # overwriting a --config given before it.
    common.add_argument("--config", default=argparse.SUPPRESS, help="configuration file")
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)

    parser = _Parser(
        prog="dicom-gateway",
        parents=[common],
        description="Capture gateway: device → DICOM → queue → PACS over TLS.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", parents=[common], help="run the service")
    p.add_argument("--only", type=_parts, metavar="{capture,forwarder,ui}[,...]")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("echo", parents=[common], help="C-ECHO configured peers")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=cmd_echo)

    # Whose images: a worklist entry, or an unscheduled patient.
    subject = _Parser(add_help=False)
    subject.add_argument("--accession", help="start the exam from this worklist entry")
    subject.add_argument("--patient-id")
    subject.add_argument("--patient-name")
    subject.add_argument("--birth-date", help="unscheduled patient: YYYY-MM-DD")
    subject.add_argument("--sex", help="unscheduled patient: M, F or O")

    p = sub.add_parser("capture", parents=[common, subject], help="headless capture into the queue")
    how_many = p.add_mutually_exclusive_group()
    how_many.add_argument("--frames", type=int, default=1, help="stills, one object each")
    how_many.add_argument(
        "--clip",
        type=float,
        metavar="SECONDS",
        help="one clip this long (capture.clip_compression)",
    )
    p.set_defaults(func=cmd_capture)

    p = sub.add_parser(
        "import", parents=[common, subject], help="wrap image/video files and queue them"
    )
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("worklist", parents=[common], help="query the Modality Worklist")
    p.add_argument("--date", default="today", help="today | YYYYMMDD | YYYYMMDD-YYYYMMDD | any")
    p.add_argument("--modality")
    p.add_argument("--station", help="scheduled station AE title (default ours; 'any')")
    p.add_argument("--patient-id")
    p.add_argument("--patient-name", help="wildcards * and ? allowed")
    p.add_argument("--accession")
    p.add_argument("--offline", action="store_true", help="answer from the cache only")
    p.set_defaults(func=cmd_worklist)

    p = sub.add_parser("queue", parents=[common], help="inspect and act on the queue")
    p.add_argument("action", nargs="?", choices=["list", "stats", "retry", "show", "flush"])
    p.add_argument("id", nargs="?", type=int)
    p.add_argument("--all", action="store_true")
    p.add_argument("--timeout", type=float, default=300.0)
    p.set_defaults(func=cmd_queue)

    p = sub.add_parser("alarm", parents=[common], help="raise an alarm (systemd's OnFailure=)")
    p.add_argument("kind", choices=["unit-failed"])
    p.add_argument("unit", help="the unit that gave up")
    p.set_defaults(func=cmd_alarm)

    p = sub.add_parser("config", parents=[common], help="check or show the configuration")
    p.add_argument("action", choices=["check", "show"])
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("export", parents=[common], help="write queued objects to a USB stick")
    p.add_argument("--to", required=True, metavar="DIR", help="empty directory on the stick")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--exam", metavar="ID", help="only this exam's objects")
    group.add_argument("--pending", action="store_true", help="only objects not yet delivered")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", parents=[common], help="end-to-end run on loopback")
    p.add_argument("--frames", type=int, default=3)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        for name, default in (("config", None), ("json", False), ("verbose", False)):
            if not hasattr(args, name):
                setattr(args, name, default)
        if getattr(args, "frames", 1) < 1:
            raise CommandError("--frames must be at least 1", EXIT_USAGE)
        clip = getattr(args, "clip", None)
        if clip is not None and not 0 < clip <= MAX_CLIP_SECONDS:
            raise CommandError(
                f"--clip must be more than 0 and at most {MAX_CLIP_SECONDS:g} seconds", EXIT_USAGE
            )
        if args.command == "import":
            handed = _import_via_service(args)
            if handed is not None:
                return handed
        if args.command == "queue" and args.action == "flush":
            handed = _flush_via_service(args)
            if handed is not None:
                return handed
        from gateway.ops.logs import setup_logging

        setup_logging(args.verbose)
        from gateway.config import ConfigError, GatewayConfig, load_config

        try:
            config = load_config(args.config) if args.command != "demo" else GatewayConfig()
            return int(args.func(args, config))
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_USAGE
        except _user_errors() as exc:
            print(f"dicom-gateway: error: {exc}", file=sys.stderr)
            return EXIT_FAILURE
    except CommandError as exc:
        print(f"dicom-gateway: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("dicom-gateway: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
