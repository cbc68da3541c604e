"""The node's persistent study queue (SQLite, in the spool folder): every study's state survives a restart.

States of a study (one row per StudyInstanceUID)::

    received --(no new instance for stable_age s)--> queued --(a worker takes it)--> running
    running --(outputs written)--> done --(SEG + SR delivered)--> sent
    running --(bad input or a failed step)--> failed (with its one-line reason)
    received --(an instance was refused: disk full)--> failed ("send the study again")
    queued / running / done / sent / failed --(a new instance arrives)--> received, generation + 1

- A new instance re-opens a study in any state: its **generation** goes up, so a run of an earlier generation that
  is still going is discarded when it ends (its outputs are never sent) and the study runs again on every instance.
- Every transition that ends a run or a delivery names the generation it belongs to and changes nothing when the
  study moved on meanwhile.
- At start-up (and on SIGTERM) studies left ``running`` go back to ``queued``: a node killed in the middle of a study
  runs it again, once. Studies left ``done`` are sent again; a delivery repeats the same SOP instances (the same
  files), so a destination that already had them stores nothing new.

The database is in WAL mode with full synchronisation: a committed transition is on disk. ``nnunet-liver-node
status`` reads it while the node runs.
"""
from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from typing import Iterator, List, Optional

__all__ = ["StudyQueue", "StudyRecord", "Job", "STATES", "RECEIVED", "QUEUED", "RUNNING", "DONE", "FAILED", "SENT",
           "SCHEMA_VERSION"]

RECEIVED, QUEUED, RUNNING, DONE, FAILED, SENT = "received", "queued", "running", "done", "failed", "sent"
STATES = (RECEIVED, QUEUED, RUNNING, DONE, FAILED, SENT)
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL UNIQUE,
    case_id TEXT UNIQUE,
    state TEXT NOT NULL,
    instances INTEGER NOT NULL DEFAULT 0,
    refused INTEGER NOT NULL DEFAULT 0,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0,
    runs INTEGER NOT NULL DEFAULT 0,
    started REAL,
    finished REAL,
    seconds REAL,
    error TEXT,
    outputs TEXT,
    send_attempts INTEGER NOT NULL DEFAULT 0,
    next_send REAL,
    send_error TEXT,
    sent REAL,
    purged INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS studies_state ON studies (state);
"""


@dataclass
class StudyRecord:
    """One row of the queue, as ``nnunet-liver-node status`` shows it (times are seconds since 1970)."""
    case_id: str
    study_uid: str
    state: str
    instances: int
    refused: int
    first_received: float
    last_received: float
    generation: int
    runs: int
    started: Optional[float]
    finished: Optional[float]
    seconds: Optional[float]
    error: Optional[str]
    outputs: List[str]
    send_attempts: int
    next_send: Optional[float]
    send_error: Optional[str]
    sent: Optional[float]
    purged: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Job:
    """A study a worker detects (or the sender delivers): which one and which generation of it."""
    id: int
    case_id: str
    study_uid: str
    generation: int
    outputs: tuple = ()
    attempts: int = 0


class StudyQueue:
    """The queue in ``path`` (created when missing). Thread-safe: one connection, one lock."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise RuntimeError(f"{path}: queue schema version {row[0]}, this node reads {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (taken at once: BEGIN IMMEDIATE), committed when the block succeeds."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- receiving ---------------------------------------------------------------------------------------------
    def ensure(self, study_uid: str, now: Optional[float] = None) -> str:
        """The case id of study ``study_uid``, creating its row (state ``received``) when it is new."""
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute("SELECT case_id FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
            if row:
                return row[0]
            cur = db.execute("INSERT INTO studies (study_uid, state, first_received, last_received) "
                             "VALUES (?, ?, ?, ?)", (study_uid, RECEIVED, now, now))
            case_id = f"study-{cur.lastrowid:06d}"
            db.execute("UPDATE studies SET case_id=? WHERE id=?", (case_id, cur.lastrowid))
            return case_id

    def instance_stored(self, case_id: str, now: Optional[float] = None) -> bool:
        """Count a new instance of a study; it re-opens the study when it had left ``received``. Returns whether it
        re-opened it."""
        return self._arrived(case_id, now, refused=False)

    def instance_refused(self, case_id: str, now: Optional[float] = None) -> bool:
        """Count an instance that could not be stored (out of resources): the study will fail when stable instead
        of running on part of its instances."""
        return self._arrived(case_id, now, refused=True)

    def _arrived(self, case_id: str, now: Optional[float], refused: bool) -> bool:
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute("SELECT state FROM studies WHERE case_id=?", (case_id,)).fetchone()
            if row is None:
                raise KeyError(case_id)
            reopen = row[0] != RECEIVED
            db.execute(f"UPDATE studies SET {'refused=refused+1' if refused else 'instances=instances+1'}, "
                       "last_received=? WHERE case_id=?", (now, case_id))
            if reopen:
                db.execute("UPDATE studies SET state=?, generation=generation+1, error=NULL, send_error=NULL, "
                           "send_attempts=0, next_send=NULL, purged=0" + ("" if refused else ", refused=0")
                           + " WHERE case_id=?", (RECEIVED, case_id))
            return reopen

    def set_instances(self, case_id: str, count: int) -> None:
        """Set a study's instance count (the spool's, at start-up: a killed node may have stored one it did not
        count)."""
        with self._tx() as db:
            db.execute("UPDATE studies SET instances=? WHERE case_id=?", (count, case_id))

    def promote_stable(self, stable_age: float, now: Optional[float] = None) -> List[tuple]:
        """``received`` studies quiet for ``stable_age`` s become ``queued`` (or ``failed`` when instances were
        refused, or none was stored). Returns ``[(case_id, new state)]``."""
        now = time.time() if now is None else now
        changed = []
        with self._tx() as db:
            rows = db.execute("SELECT case_id, instances, refused FROM studies WHERE state=? AND last_received<=? "
                              "ORDER BY last_received", (RECEIVED, now - stable_age)).fetchall()
            for case_id, instances, refused in rows:
                if refused:
                    error = (f"{refused} instance(s) refused while the node's disk was full (status 0xA700); "
                             f"send the study again")
                    db.execute("UPDATE studies SET state=?, error=?, finished=? WHERE case_id=?",
                               (FAILED, error, now, case_id))
                    changed.append((case_id, FAILED))
                elif instances > 0:
                    db.execute("UPDATE studies SET state=? WHERE case_id=?", (QUEUED, case_id))
                    changed.append((case_id, QUEUED))
                else:  # its first instance was never stored (the node died writing it)
                    db.execute("UPDATE studies SET state=?, error=?, finished=? WHERE case_id=?",
                               (FAILED, "no instance of the study was stored; send the study again", now, case_id))
                    changed.append((case_id, FAILED))
        return changed

    # -- detecting ---------------------------------------------------------------------------------------------
    def claim(self, now: Optional[float] = None) -> Optional[Job]:
        """The oldest ``queued`` study, now ``running``; ``None`` when there is none."""
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute("SELECT id, case_id, study_uid, generation FROM studies WHERE state=? "
                             "ORDER BY last_received, id LIMIT 1", (QUEUED,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE studies SET state=?, started=? WHERE id=?", (RUNNING, now, row["id"]))
            return Job(row["id"], row["case_id"], row["study_uid"], row["generation"])

    def finish(self, job: Job, outputs: List[str], now: Optional[float] = None) -> bool:
        """A run ended with outputs to send: ``done``. ``False`` (nothing changed) when the study moved on."""
        now = time.time() if now is None else now
        return self._end_run(job, DONE, now, outputs=json.dumps(list(outputs)), error=None, next_send=now)

    def fail(self, job: Job, error: str, now: Optional[float] = None) -> bool:
        """A run ended in an error (one line): ``failed``. ``False`` when the study moved on."""
        now = time.time() if now is None else now
        return self._end_run(job, FAILED, now, outputs=None, error=error, next_send=None)

    def _end_run(self, job: Job, state: str, now: float, **values) -> bool:
        with self._tx() as db:
            cur = db.execute("UPDATE studies SET state=?, runs=runs+1, finished=?, seconds=?-started, outputs=?, "
                             "error=?, next_send=?, send_attempts=0, send_error=NULL "
                             "WHERE id=? AND state=? AND generation=?",
                             (state, now, now, values["outputs"], values["error"], values["next_send"], job.id,
                              RUNNING, job.generation))
            return cur.rowcount == 1

    def requeue_running(self) -> List[str]:
        """Every ``running`` study back to ``queued`` (start-up, SIGTERM); returns their case ids."""
        with self._tx() as db:
            rows = [r[0] for r in db.execute("SELECT case_id FROM studies WHERE state=?", (RUNNING,))]
            db.execute("UPDATE studies SET state=?, started=NULL WHERE state=?", (QUEUED, RUNNING))
            return rows

    def requeue(self, case_id: str) -> bool:
        """Run a ``failed``, ``done`` or ``sent`` study again (a new generation); ``False`` for an unknown study or
        one still receiving, queued or running."""
        with self._tx() as db:
            cur = db.execute("UPDATE studies SET state=?, generation=generation+1, error=NULL, send_error=NULL, "
                             "send_attempts=0, next_send=NULL, refused=0 WHERE case_id=? AND state IN (?, ?, ?) "
                             "AND purged=0", (QUEUED, case_id, FAILED, DONE, SENT))
            return cur.rowcount == 1

    # -- sending -----------------------------------------------------------------------------------------------
    def next_delivery(self, now: Optional[float] = None) -> Optional[Job]:
        """The ``done`` study whose delivery is due first, or ``None``."""
        now = time.time() if now is None else now
        with self._lock:
            row = self._db.execute("SELECT id, case_id, study_uid, generation, outputs, send_attempts FROM studies "
                                   "WHERE state=? AND next_send<=? ORDER BY next_send, id LIMIT 1",
                                   (DONE, now)).fetchone()
        if row is None:
            return None
        return Job(row["id"], row["case_id"], row["study_uid"], row["generation"],
                   tuple(json.loads(row["outputs"] or "[]")), row["send_attempts"])

    def delivered(self, job: Job, now: Optional[float] = None) -> bool:
        now = time.time() if now is None else now
        with self._tx() as db:
            cur = db.execute("UPDATE studies SET state=?, sent=?, send_error=NULL WHERE id=? AND state=? AND "
                             "generation=?", (SENT, now, job.id, DONE, job.generation))
            return cur.rowcount == 1

    def delivery_failed(self, job: Job, error: str, retry_at: float) -> bool:
        with self._tx() as db:
            cur = db.execute("UPDATE studies SET send_attempts=send_attempts+1, send_error=?, next_send=? "
                             "WHERE id=? AND state=? AND generation=?", (error, retry_at, job.id, DONE,
                                                                         job.generation))
            return cur.rowcount == 1

    # -- housekeeping and status -------------------------------------------------------------------------------
    def expired(self, retention_s: float, now: Optional[float] = None) -> List[str]:
        """Case ids of ``sent`` / ``failed`` studies finished more than ``retention_s`` ago, not yet purged."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute("SELECT case_id FROM studies WHERE purged=0 AND ((state=? AND sent<=?) OR "
                                    "(state=? AND finished<=?))", (SENT, now - retention_s, FAILED,
                                                                   now - retention_s)).fetchall()
        return [r[0] for r in rows]

    def mark_purged(self, case_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE studies SET purged=1 WHERE case_id=?", (case_id,))

    def records(self, states: Optional[List[str]] = None, case_id: Optional[str] = None) -> List[StudyRecord]:
        """Every study (or those in ``states``, or the one ``case_id``), oldest first."""
        where, args = [], []
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            args += list(states)
        if case_id is not None:
            where.append("case_id=?")
            args.append(case_id)
        sql = "SELECT * FROM studies" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        out = []
        for r in rows:
            d = {k: r[k] for k in r.keys() if k != "id"}
            d["outputs"] = json.loads(d["outputs"] or "[]")
            d["purged"] = bool(d["purged"])
            out.append(StudyRecord(**d))
        return out

    def record(self, case_id: str) -> Optional[StudyRecord]:
        found = self.records(case_id=case_id)
        return found[0] if found else None

    def counts(self) -> dict:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM studies GROUP BY state").fetchall()
        found = dict((r[0], r[1]) for r in rows)
        return {s: found.get(s, 0) for s in STATES}
