"""Real worklist peers for the tests and the benchmark: DCMTK's `wlmscpfs`
serving Debian's example worklist (converted with `dump2dcm`) plus entries we
write, optionally behind `stunnel4` requiring client certificates."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from tests.support.process import free_port, require_tool, stop_process, wait_for_port

EXAMPLES = Path("/usr/share/doc/dcmtk/examples/wlistdb/OFFIS")
AE = "OFFIS"


def convert_examples(db: Path) -> list[Path]:
    """Debian ships the example worklist as dcmdump text; wlmscpfs wants .wl files."""
    dump2dcm = require_tool("dump2dcm")
    out = []
    for dump in sorted(EXAMPLES.glob("*.dump")):
        target = db / f"{dump.stem}.wl"
        subprocess.run(
            [dump2dcm, "-q", "-g", str(dump), str(target)], check=True, capture_output=True
        )
        out.append(target)
    if not out:
        raise RuntimeError(f"no example worklist in {EXAMPLES}; is dcmtk installed?")
    return out


def write_entry(
    path: Path,
    *,
    name: str,
    patient_id: str,
    accession: str,
    study_uid: str,
    day: date,
    time: str = "093000",
    charset: str = "ISO_IR 192",
    modality: str = "OT",
    station: str = "EDGE1",
    step_id: str = "SPS1",
    description: str = "Ultrasound abdomen",
    location: str = "ROOM 1",
    physician: str = "WHO^DOCTOR",
) -> Path:
    ds = Dataset()
    ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
    ds.AccessionNumber = accession
    ds.ReferringPhysicianName = "REF^ERRING"
    ds.PatientName = name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid
    ds.RequestedProcedureID = f"RP{accession}"[:16]
    ds.RequestedProcedureDescription = description
    ds.RequestedProcedurePriority = "LOW"
    ds.RequestingPhysician = "REQ^UESTER"
    step = Dataset()
    step.Modality = modality
    step.ScheduledStationAETitle = station
    step.ScheduledProcedureStepStartDate = day.strftime("%Y%m%d")
    step.ScheduledProcedureStepStartTime = time
    step.ScheduledPerformingPhysicianName = physician
    step.ScheduledProcedureStepDescription = description
    step.ScheduledProcedureStepID = step_id
    step.ScheduledStationName = "STATION"
    step.ScheduledProcedureStepLocation = location
    code = Dataset()
    code.CodeValue = "P1"
    code.CodingSchemeDesignator = "99LOCAL"
    code.CodeMeaning = "Abdomen protocol"
    step.ScheduledProtocolCodeSequence = Sequence([code])
    ds.ScheduledProcedureStepSequence = Sequence([step])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.276.0.7230010.3.1.0.1"  # DCMTK's worklist file class
    meta.MediaStorageSOPInstanceUID = study_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return path


@dataclass
class WlmSCP:
    """wlmscpfs on loopback, answering for AE title OFFIS from `root`/OFFIS.
    With `log`, it runs verbose into that file, so a test can count the
    associations and C-FIND requests the RIS saw."""

    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def db(self) -> Path:
        return self.root / AE

    def prepare(self, examples: bool = True) -> WlmSCP:
        self.db.mkdir(parents=True, exist_ok=True)
        (self.db / "lockfile").touch()
        if examples:
            convert_examples(self.db)
        return self

    def start(self) -> WlmSCP:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                [
                    require_tool("wlmscpfs"),
                    "-v" if self.log else "-q",
                    "-csk",  # answer in the character set each file declares
                    "-dfp",
                    str(self.root),
                    str(self.port),
                ],
                env={**os.environ, "TCP_NODELAY": "1"},
                stdout=out,
                stderr=out,
            )
        finally:
            if self.log:
                out.close()  # type: ignore[union-attr]
        wait_for_port(self.port, self.proc)
        return self

    def _count(self, pattern: str) -> int:
        if self.log is None or not self.log.exists():
            return 0
        return len(re.findall(pattern, self.log.read_text(errors="replace")))

    def associations(self) -> int:
        """Associations the RIS was asked for so far (needs `log`); a bare
        TCP connect (a port probe) names no AE titles and is not counted."""
        return self._count(r"Association Received \([^)]*:\S+ -> \S+\)")

    def finds(self) -> int:
        """C-FIND requests the RIS answered so far (needs `log`)."""
        return self._count(r"C-FIND RQ")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


@dataclass
class Stunnel:
    """stunnel4 in front of a plain port: TLS 1.2+, client certificate
    required and verified against `ca` (the RIS side of mutual TLS)."""

    work: Path
    target_port: int
    cert: Path
    key: Path
    ca: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    debug: int = 3  # 5 logs each accepted connection (see `connections`)

    def start(self) -> Stunnel:
        self.work.mkdir(parents=True, exist_ok=True)
        conf = self.work / "stunnel.conf"
        conf.write_text(
            "foreground = yes\n"
            f"pid =\n"
            f"debug = {self.debug}\n"
            f"output = {self.work / 'stunnel.log'}\n"
            "[worklist]\n"
            f"accept = 127.0.0.1:{self.port}\n"
            f"connect = 127.0.0.1:{self.target_port}\n"
            f"cert = {self.cert}\n"
            f"key = {self.key}\n"
            f"CAfile = {self.ca}\n"
            "verifyChain = yes\n"
            "requireCert = yes\n"
            "sslVersionMin = TLSv1.2\n"
        )
        self.proc = subprocess.Popen(
            [require_tool("stunnel4"), str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self.proc)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def connections(self) -> int:
        """Connections the tunnel accepted so far (needs `debug` 5)."""
        log = self.work / "stunnel.log"
        return log.read_text(errors="replace").count("accepted connection") if log.exists() else 0
