"""The node's log: one line per study event and association, and no patient identifier, ever.

The node's own lines name the study by its StudyInstanceUID and the node's case id, and the peer by AE title and
address. Libraries that read DICOM may quote attribute values in their warnings (highdicom warns about a patient
name it finds odd, quoting it; pydicom logs invalid values with the value): their messages are withheld and only
their source (logger or warning category, file and line) is logged. pynetdicom's protocol messages pass (it quotes
datasets only at DEBUG). At ``log_level`` DEBUG nothing is withheld: for troubleshooting, not for production.
"""
from __future__ import annotations

import logging
import sys

__all__ = ["setup_logging", "WithholdValues"]

_PASS = ("nnunet_liver", "pynetdicom")


class WithholdValues(logging.Filter):
    """Reduce a record from outside :data:`_PASS` to where it came from (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(_PASS):
            return True
        if record.name == "py.warnings":  # "FILE:LINE: Category: text\n  source line"
            where = ": ".join(str(record.getMessage()).split(": ", 2)[:2])
            record.msg = f"{where} (text withheld: it may quote patient data)"
        else:
            record.msg = f"message from {record.pathname}:{record.lineno} withheld (it may quote patient data)"
        record.args = ()
        return True


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr (the journal, under systemd) with :class:`WithholdValues`, warnings included."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if level != "DEBUG":
        handler.addFilter(WithholdValues())
        for noisy in ("highdicom", "pynetdicom"):  # one line per study and association, not per module or PDU
            logging.getLogger(noisy).setLevel(logging.WARNING)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level))
    logging.captureWarnings(True)
