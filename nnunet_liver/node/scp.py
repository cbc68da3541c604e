"""The node's DICOM listener: a pynetdicom Storage SCP (and Verification SCP, for C-ECHO) that spools studies.

Association requests are checked before anything is negotiated:

- the called AE title must be the node's, and the calling AE title and the peer's address must match one of
  ``allowed_peers``; otherwise A-ASSOCIATE-RJ (rejected-permanent, service user, "calling AE title not recognised");
- with less than ``min_free_mb`` free in the spool, A-ASSOCIATE-RJ (rejected-transient, service provider,
  "local limit exceeded"): the sender keeps the study and tries again later.

Every storage SOP class is accepted in every transfer syntax pynetdicom knows (the instance is written as it
arrives, never decoded or transcoded here). C-STORE answers (PS3.4 Annex B):

- ``0x0000`` when the instance is on disk (file and folder synced: :meth:`nnunet_liver.node.spool.Spool.store`), or
  when it was already there (a re-sent instance is stored once), or when its SOP class is not one the detector reads
  (the dose report, scouts' secondary captures, earlier SEG and SR: accepted and dropped, so a router that sends the
  whole study succeeds, and results sent back to the router are not taken as new input);
- ``0xA700`` (Refused: Out of Resources) when the disk is full or the write fails: nothing of the instance stays,
  and the study is marked so that it fails rather than running on part of its instances;
- ``0xC000`` (Error: Cannot understand) when the instance has no valid StudyInstanceUID / SOPInstanceUID.

Logs name the peer (AE title, address), the node's case id and the StudyInstanceUID, never a patient attribute.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Dict, Optional, Tuple

from nnunet_liver.dicom.index import CT_IMAGE_STORAGE
from nnunet_liver.node.config import NodeConfig
from nnunet_liver.node.queue import StudyQueue
from nnunet_liver.dicom.index import is_uid
from nnunet_liver.node.spool import Spool

__all__ = ["StorageListener", "SPOOLED_SOP_CLASSES", "STATUS_SUCCESS", "STATUS_OUT_OF_RESOURCES",
           "STATUS_CANNOT_UNDERSTAND"]

LOG = logging.getLogger("nnunet_liver.node")
#: the SOP classes whose instances are study input (what :mod:`nnunet_liver.dicom` reads)
SPOOLED_SOP_CLASSES = frozenset({CT_IMAGE_STORAGE})
STATUS_SUCCESS, STATUS_OUT_OF_RESOURCES, STATUS_CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000
#: A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
_REJECT_PEER = (0x01, 0x01, 0x03)
_REJECT_FULL = (0x02, 0x03, 0x02)


class _Tally:
    """What one association brought (for its log line)."""

    def __init__(self):
        self.stored = self.duplicate = self.ignored = self.refused = self.invalid = 0
        self.studies: Dict[str, str] = {}

    def line(self) -> str:
        studies = ", ".join(f"{case} ({uid})" for uid, case in self.studies.items()) or "no study"
        return (f"{self.stored} stored, {self.duplicate} already held, {self.ignored} not CT images (dropped), "
                f"{self.refused} refused, {self.invalid} invalid; {studies}")


class StorageListener:
    """The Storage SCP of the node; :meth:`start` listens in background threads, :meth:`stop` closes.

    ``on_instance`` (optional) is called with the case id after every stored instance (the node wakes its
    scheduler with it).
    """

    def __init__(self, config: NodeConfig, spool: Spool, queue: StudyQueue,
                 on_instance: Optional[Callable[[str], None]] = None):
        self.config, self.spool, self.queue = config, spool, queue
        self.on_instance = on_instance
        self._server = None
        self._tallies: Dict[int, _Tally] = {}
        self._cases: Dict[str, str] = {}  # StudyInstanceUID -> case id (a case id never changes)
        self._lock = threading.Lock()

    def _ae(self):
        from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.config.ae_title)
        ae.require_called_aet = True
        ae.maximum_pdu_size = self.config.max_pdu
        ae.network_timeout = self.config.network_timeout_s
        ae.acse_timeout = ae.dimse_timeout = self.config.network_timeout_s
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        return ae

    def start(self) -> Tuple[str, int]:
        """Listen on ``bind:port`` (port 0: any free port); returns the address listened on."""
        from pynetdicom import evt

        handlers = [(evt.EVT_REQUESTED, self._on_requested), (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS), (evt.EVT_RELEASED, self._on_closed),
                    (evt.EVT_ABORTED, self._on_closed)]
        self._server = self._ae().start_server((self.config.bind, self.config.port), block=False,
                                               evt_handlers=handlers)
        host, port = self._server.server_address[:2]
        LOG.info("listening as %s on %s:%d", self.config.ae_title, host, port)
        return host, port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # -- handlers (each association runs in its own thread) -----------------------------------------------------
    def _on_requested(self, event) -> None:
        assoc = event.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        address = assoc.requestor.address
        if not any(p.allows(calling, address) for p in self.config.allowed_peers):
            LOG.warning("rejected an association from AE %r at %s: not an allowed peer", calling, address)
            self._reject(assoc, _REJECT_PEER)
        elif self.spool.free_mb() < self.config.min_free_mb:
            LOG.error("rejected an association from AE %r at %s: %.0f MB free in %s, below min_free_mb %.0f",
                      calling, address, self.spool.free_mb(), self.spool.root, self.config.min_free_mb)
            self._reject(assoc, _REJECT_FULL)

    @staticmethod
    def _reject(assoc, rsd) -> None:
        from pynetdicom import evt

        assoc.acse.send_reject(*rsd)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def _tally(self, assoc) -> _Tally:
        with self._lock:
            return self._tallies.setdefault(id(assoc), _Tally())

    def _on_store(self, event) -> int:
        tally = self._tally(event.assoc)
        sop_class = str(event.request.AffectedSOPClassUID)
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        if sop_class not in SPOOLED_SOP_CLASSES:
            tally.ignored += 1
            return STATUS_SUCCESS
        try:
            ds = event.dataset
            study_uid = str(ds.StudyInstanceUID)
            same = str(ds.SOPInstanceUID) == sop_uid
        except Exception:  # noqa: BLE001 - any undecodable dataset is the peer's error, answered as such
            study_uid, same = "", False
        if not (same and is_uid(sop_uid) and is_uid(study_uid)):
            tally.invalid += 1
            return STATUS_CANNOT_UNDERSTAND
        case_id = self._cases.get(study_uid) or self._cases.setdefault(study_uid, self.queue.ensure(study_uid))
        tally.studies[study_uid] = case_id
        if self.spool.has(case_id, sop_uid):
            tally.duplicate += 1
            return STATUS_SUCCESS
        if self.spool.free_mb() < self.config.min_free_mb:
            return self._refused(tally, case_id, f"{self.spool.free_mb():.0f} MB free, below min_free_mb")
        try:
            new = self.spool.store(case_id, sop_uid, event.encoded_dataset())
        except OSError as e:
            return self._refused(tally, case_id, e.strerror or str(e))
        if not new:
            tally.duplicate += 1
            return STATUS_SUCCESS
        tally.stored += 1
        if self.queue.instance_stored(case_id):
            LOG.info("%s (%s): a new instance re-opened the study", case_id, study_uid)
        if self.on_instance is not None:
            self.on_instance(case_id)
        return STATUS_SUCCESS

    def _refused(self, tally: _Tally, case_id: str, why: str) -> int:
        tally.refused += 1
        if tally.refused == 1:
            LOG.error("%s: refusing instances (0xA700 out of resources): %s", case_id, why)
        self.queue.instance_refused(case_id)
        return STATUS_OUT_OF_RESOURCES

    def _on_closed(self, event) -> None:
        with self._lock:
            tally = self._tallies.pop(id(event.assoc), None)
        if tally is not None:
            requestor = event.assoc.requestor
            LOG.info("association from AE %r at %s ended: %s", str(requestor.ae_title).strip(), requestor.address,
                     tally.line())
