"""Delivering a study's SEG + SR: C-STORE SCU (pynetdicom) to a DICOM node, or STOW-RS to a DICOMweb server.

A delivery either stores every file or raises :class:`DeliveryError` with one line saying why; the node then
retries it after :func:`retry_delay` seconds, for ever (a destination that is down loses nothing). A delivery
repeats the same files, i.e. the same SOP instances: a destination that already stored some of them keeps one copy.
C-STORE warning statuses (0xB000, 0xB006, 0xB007: stored with coercion or elements discarded) count as stored.
"""
from __future__ import annotations

import os
import socket
from typing import Sequence

from nnunet_liver.node.config import Destination

__all__ = ["DeliveryError", "retry_delay", "no_delay", "CStoreDestination", "StowDestination", "make_destination"]

_STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class DeliveryError(RuntimeError):
    """A delivery that did not store every file (one line)."""


def retry_delay(attempts: int, initial: float, maximum: float) -> float:
    """Seconds before the next try after ``attempts`` failed ones: ``initial * 2**(attempts - 1)``, at most
    ``maximum``."""
    return float(min(maximum, initial * 2.0 ** max(0, min(attempts - 1, 60))))


def no_delay(event) -> None:
    """``EVT_CONN_OPEN`` handler: send each PDU at once (TCP_NODELAY). Without it the dataset PDU that follows a
    C-STORE command PDU waits for the peer's delayed acknowledgement, about 40 ms per instance on Linux."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class CStoreDestination:
    """C-STORE SCU to ``destination`` (AE title, host, port), calling as ``calling_ae``."""

    def __init__(self, destination: Destination, calling_ae: str, timeout: float = 60.0):
        self.destination, self.calling_ae, self.timeout = destination, calling_ae, timeout

    def send(self, paths: Sequence[str]) -> None:
        import pydicom
        from pynetdicom import AE, evt
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

        d = self.destination
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        for sop_class in dict.fromkeys(str(h.SOPClassUID) for h in headers):
            syntaxes = dict.fromkeys([str(h.file_meta.TransferSyntaxUID) for h in headers
                                      if str(h.SOPClassUID) == sop_class]
                                     + [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
            ae.add_requested_context(sop_class, list(syntaxes))
        assoc = ae.associate(d.host, d.port, ae_title=d.ae_title, evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)])
        if not assoc.is_established:
            why = "rejected the association" if assoc.is_rejected else (
                "aborted the association" if assoc.is_aborted else "did not answer")
            raise DeliveryError(f"{d.describe()}: {why}")
        try:
            for path in paths:
                status = assoc.send_c_store(path)
                code = int(status.Status) if status is not None and "Status" in status else None
                if code not in _STORED:
                    raise DeliveryError(f"{d.describe()}: C-STORE of {os.path.basename(path)} failed ("
                                        + ("no response: connection lost or timed out" if code is None
                                           else f"status 0x{code:04X}") + ")")
        finally:
            if assoc.is_established:
                assoc.release()


class StowDestination:
    """STOW-RS to a DICOMweb server (credentials: :mod:`nnunet_liver.dicom.web`)."""

    def __init__(self, destination: Destination, timeout: float = 120.0):
        from nnunet_liver.dicom.web import make_client

        self.destination = destination
        self.client = make_client(destination.dicomweb, destination.auth_file, timeout=timeout)

    def send(self, paths: Sequence[str]) -> None:
        from nnunet_liver.dicom.web import store_files

        try:
            store_files(self.client, paths)
        except RuntimeError as e:  # StowError and failed HTTP exchanges
            raise DeliveryError(str(e)) from None


def make_destination(destination: Destination, calling_ae: str, timeout: float = 60.0):
    """The sender for a configured destination."""
    if destination.kind == "dicomweb":
        return StowDestination(destination, timeout=max(timeout, 120.0))
    return CStoreDestination(destination, calling_ae, timeout=timeout)
