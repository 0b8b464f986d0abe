"""DICOM audit messages (PS3.15 A.5.1 schema, IHE ATNA) and their RFC 5424
syslog frame: the vocabulary of the audit trail, with no transport."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from xml.etree import ElementTree as ET

APP_NAME = "dicom-gateway"
MSGID = "IHE+RFC-3881"  # what ATNA repositories expect (IHE ITI TF-2 3.20.6)
FACILITY_AUTHPRIV = 10

# Event outcome indicator (PS3.15 A.5.1)
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = 0, 4, 8, 12

Code = tuple[str, str, str]  # (csd-code, codeSystemName, originalText)


def dcm(code: str, text: str) -> Code:
    return (code, "DCM", text)


APPLICATION_ACTIVITY = dcm("110100", "Application Activity")
APPLICATION_START = dcm("110120", "Application Start")
APPLICATION_STOP = dcm("110121", "Application Stop")
INSTANCES_TRANSFERRED = dcm("110104", "DICOM Instances Transferred")
QUERY = dcm("110112", "Query")
USER_AUTHENTICATION = dcm("110114", "User Authentication")
LOGIN = dcm("110122", "Login")
SECURITY_ALERT = dcm("110113", "Security Alert")
NODE_AUTHENTICATION = dcm("110126", "Node Authentication")
SOFTWARE_CONFIGURATION = dcm("110131", "Software Configuration")
USER_SECURITY_ATTRIBUTES_CHANGED = dcm("110137", "User Security Attributes Changed")
ROLE_APPLICATION = dcm("110150", "Application")
ROLE_APPLICATION_LAUNCHER = dcm("110151", "Application Launcher")
ROLE_DESTINATION = dcm("110152", "Destination Role ID")
ROLE_SOURCE = dcm("110153", "Source Role ID")
STUDY_INSTANCE_UID = dcm("110180", "Study Instance UID")
SOP_CLASS_UID = dcm("110181", "SOP Class UID")
PATIENT_NUMBER = ("2", "RFC-3881", "Patient Number")
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"


@dataclass(frozen=True)
class Participant:
    user_id: str
    requestor: bool
    role: Code | None = None
    alternative_id: str | None = None
    network_access_point: str | None = None  # host name or IP

    def element(self) -> ET.Element:
        el = ET.Element("ActiveParticipant", UserID=self.user_id)
        if self.alternative_id:
            el.set("AlternativeUserID", self.alternative_id)
        el.set("UserIsRequestor", "true" if self.requestor else "false")
        if self.network_access_point:
            nap = self.network_access_point
            is_ip = nap.replace(".", "").isdigit() or ":" in nap
            el.set("NetworkAccessPointID", nap)
            el.set("NetworkAccessPointTypeCode", "2" if is_ip else "1")
        if self.role:
            _code(el, "RoleIDCode", self.role)
        return el


@dataclass(frozen=True)
class ParticipantObject:
    object_id: str
    type_code: int  # 1 person, 2 system object
    role: int  # 1 patient, 3 report, 24 query
    id_type: Code
    sop_classes: dict[str, int] = field(default_factory=dict)  # UID → number of instances
    query: bytes | None = None
    details: dict[str, str] = field(default_factory=dict)

    def element(self) -> ET.Element:
        el = ET.Element(
            "ParticipantObjectIdentification",
            ParticipantObjectID=self.object_id,
            ParticipantObjectTypeCode=str(self.type_code),
            ParticipantObjectTypeCodeRole=str(self.role),
        )
        _code(el, "ParticipantObjectIDTypeCode", self.id_type)
        if self.query is not None:
            ET.SubElement(el, "ParticipantObjectQuery").text = base64.b64encode(self.query).decode()
        for key, value in self.details.items():
            ET.SubElement(
                el,
                "ParticipantObjectDetail",
                type=key,
                value=base64.b64encode(value.encode()).decode(),
            )
        if self.sop_classes:
            desc = ET.SubElement(el, "ParticipantObjectDescription")
            for uid, count in sorted(self.sop_classes.items()):
                ET.SubElement(desc, "SOPClass", UID=uid, NumberOfInstances=str(count))
        return el


def _code(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(
        parent, tag, {"csd-code": code[0], "codeSystemName": code[1], "originalText": code[2]}
    )


@dataclass(frozen=True)
class AuditEvent:
    event_id: Code
    action: str  # C R U D E
    outcome: int
    participants: list[Participant]
    objects: list[ParticipantObject] = field(default_factory=list)
    event_type: Code | None = None
    outcome_description: str | None = None
    when: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_xml(self, source_id: str, site: str = "") -> str:
        root = ET.Element("AuditMessage")
        ev = ET.SubElement(
            root,
            "EventIdentification",
            EventActionCode=self.action,
            EventDateTime=self.when.isoformat(timespec="milliseconds"),
            EventOutcomeIndicator=str(self.outcome),
        )
        _code(ev, "EventID", self.event_id)
        if self.event_type:
            _code(ev, "EventTypeCode", self.event_type)
        if self.outcome_description:
            ET.SubElement(ev, "EventOutcomeDescription").text = self.outcome_description
        for p in self.participants:
            root.append(p.element())
        src = ET.SubElement(root, "AuditSourceIdentification", AuditSourceID=source_id)
        if site:
            src.set("AuditEnterpriseSiteID", site)
        # 4: Application Server process tier (PS3.15 A.5.1 AuditSourceTypeCode)
        ET.SubElement(src, "AuditSourceTypeCode", {"csd-code": "4", "codeSystemName": "DCM"})
        for obj in self.objects:
            root.append(obj.element())
        return ET.tostring(root, encoding="unicode")


def syslog_frame(xml: str, host: str, severity: int, when: datetime | None = None) -> bytes:
    """One RFC 5424 message: header, no structured data, BOM + UTF-8 XML."""
    when = when or datetime.now(UTC)
    pri = FACILITY_AUTHPRIV * 8 + severity
    stamp = when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    header = f"<{pri}>1 {stamp} {host or '-'} {APP_NAME} {os.getpid()} {MSGID} - "
    return header.encode() + b"\xef\xbb\xbf" + xml.encode()
