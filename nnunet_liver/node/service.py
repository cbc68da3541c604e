"""The running node: listener, scheduler, detection workers and the sender around one persistent queue.

- **Start-up**: temporary files a killed node left are removed, studies left ``running`` are queued again, the
  instance counts are taken from the spool; the model is loaded (once per worker, kept for the node's life); then
  the listener starts.
- **Scheduler** (the main thread, every ``tick`` s): ``received`` studies quiet for ``stable_age`` s become
  ``queued``; results and instances older than ``retention_hours`` are deleted.
- **Workers** (``workers`` threads, one detector each): take the oldest queued study and run the detector on its
  spool folder (:func:`nnunet_liver.inference.runner.run_folder`, the DICOM path of ``nnunet-liver-detect``) into a
  temporary folder renamed when the run ends. A bad study becomes ``failed`` with its one-line reason; the node goes
  on with the next.
- **Sender** (one thread): delivers each ``done`` study's SEG + SR (:mod:`nnunet_liver.node.sender`), retried with
  back-off until it succeeds.
- **SIGTERM / SIGINT**: the listener closes, the running studies go back to ``queued`` (they run again at the next
  start), and the process exits 0 without waiting for a detection to end.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from typing import List, Optional

from nnunet_liver.node.config import NodeConfig
from nnunet_liver.node.queue import QUEUED, Job, StudyQueue
from nnunet_liver.node.scp import StorageListener
from nnunet_liver.node.sender import make_destination, retry_delay
from nnunet_liver.node.spool import Spool
from nnunet_liver.utils.io import InputError

__all__ = ["Node", "one_line"]

LOG = logging.getLogger("nnunet_liver.node")


def one_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:500]


class Node:
    """The node for ``config``; :meth:`run` serves until SIGTERM / SIGINT (or :meth:`stop`)."""

    def __init__(self, config: NodeConfig, tick: Optional[float] = None):
        self.config = config
        self.spool = Spool(config.spool)
        self.queue = StudyQueue(self.spool.database)
        self.listener = StorageListener(config, self.spool, self.queue)
        self.destination = make_destination(config.destination, config.ae_title, config.network_timeout_s)
        self.tick = tick if tick is not None else min(1.0, max(0.05, config.stable_age / 4))
        self.stopping = threading.Event()
        self.detectors: List[object] = []
        self.address = None

    # -- life cycle --------------------------------------------------------------------------------------------
    def recover(self) -> None:
        """Undo what a killed node left behind (see the module docstring)."""
        files, runs = self.spool.clean_temporary()
        requeued = self.queue.requeue_running()
        for rec in self.queue.records():
            if not rec.purged:
                count = self.spool.count(rec.case_id)
                if count != rec.instances:
                    self.queue.set_instances(rec.case_id, count)
        if files or runs or requeued:
            LOG.info("recovered: %d half-written instance(s) and %d unfinished run(s) removed; queued again: %s",
                     files, runs, ", ".join(requeued) or "none")

    def load_detectors(self) -> None:
        """One :class:`~nnunet_liver.inference.LiverDetector` per worker, loaded now and kept."""
        from nnunet_liver.inference import LiverDetector

        cfg = self.config
        for k in range(cfg.workers):
            device = cfg.device_of(k)
            if device == "auto":
                import torch

                device = "cuda" if torch.cuda.is_available() else "cpu"
            t0 = time.time()
            self.detectors.append(LiverDetector(cfg.model, folds=cfg.folds, checkpoint=cfg.checkpoint,
                                                patch_model_dir=cfg.patch_model_dir(), factors=cfg.factors,
                                                device=device, use_mirroring=not cfg.disable_tta))
            LOG.info("worker %d: model %s loaded on %s in %.1f s", k, cfg.model, device, time.time() - t0)

    def run(self) -> int:
        """Serve until stopped; returns the exit code (0)."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda signum, frame: self.stop(signal.Signals(signum).name))
        self.recover()
        self.load_detectors()
        if self.stopping.is_set():
            return 0
        self.address = self.listener.start()
        threads = [threading.Thread(target=self._work, args=(k, d), name=f"worker-{k}", daemon=True)
                   for k, d in enumerate(self.detectors)]
        threads.append(threading.Thread(target=self._deliver, name="sender", daemon=True))
        for t in threads:
            t.start()
        LOG.info("node %s ready: %d worker(s), stable_age %g s, results to %s (%s)", self.config.ae_title,
                 len(self.detectors), self.config.stable_age, self.config.destination.describe(),
                 self.config.destination.kind)
        last_housekeeping = 0.0
        while not self.stopping.wait(self.tick):
            for case_id, state in self.queue.promote_stable(self.config.stable_age):
                rec = self.queue.record(case_id)
                if state == QUEUED:
                    LOG.info("%s (%s): complete, %d instance(s); queued", case_id, rec.study_uid, rec.instances)
                else:
                    LOG.error("%s (%s): failed: %s", case_id, rec.study_uid, rec.error)
            if time.time() - last_housekeeping > 60:
                self._housekeeping()
                last_housekeeping = time.time()
        self.listener.stop()
        requeued = self.queue.requeue_running()
        LOG.info("stopped; queued again for the next start: %s", ", ".join(requeued) or "none")
        return 0

    def stop(self, why: str = "stop") -> None:
        if not self.stopping.is_set():
            LOG.info("%s: stopping", why)
        self.stopping.set()

    def _housekeeping(self) -> None:
        if self.config.retention_hours <= 0:
            return
        for case_id in self.queue.expired(self.config.retention_hours * 3600):
            self.spool.remove_study(case_id)
            self.queue.mark_purged(case_id)
            LOG.info("%s: instances and results deleted (retention %g h)", case_id, self.config.retention_hours)

    # -- detection ---------------------------------------------------------------------------------------------
    def _work(self, k: int, detector) -> None:
        while not self.stopping.is_set():
            job = self.queue.claim()
            if job is None:
                self.stopping.wait(self.tick)
                continue
            try:
                self.detect(job, detector, f"worker {k}")
            except Exception as e:  # noqa: BLE001 - a worker never dies; the study records the error
                LOG.exception("%s: unexpected error", job.case_id)
                self.queue.fail(job, f"{type(e).__name__}: {one_line(e)}")

    def detect(self, job: Job, detector, who: str = "worker") -> None:
        """Run one claimed study and record its end (``done`` with outputs, or ``failed``)."""
        from nnunet_liver.inference.runner import output_paths, run_folder

        LOG.info("%s (%s): running on %s", job.case_id, job.study_uid, who)
        t0 = time.time()
        tmp = self.spool.new_run_dir(job.case_id, job.generation)
        try:
            result = run_folder(detector, self.spool.study_dir(job.case_id), tmp, report=False, progress=False)
        except InputError as e:  # e.g. the folder holds no readable DICOM study
            result, error = None, one_line(e)
        if result is not None:
            error = next(iter(result.failed.values()), None)
            if error is None and job.case_id not in result.done:
                error = f"the spool folder held no study named {job.case_id} ({result})"
        if error is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            if self.queue.fail(job, error):
                LOG.error("%s (%s): failed: %s", job.case_id, job.study_uid, error)
            return
        final = self.spool.keep_run(tmp, job.case_id, job.generation)
        with open(output_paths(final, job.case_id)["json"], encoding="utf-8") as f:
            record = json.load(f)
        outputs = [n for n in (record.get("dicom", {}).get("outputs", {}).get(k) for k in ("seg", "sr")) if n]
        if self.queue.finish(job, outputs):
            LOG.info("%s (%s): done in %.1f s: %d lesion(s); to send: %s", job.case_id, job.study_uid,
                     time.time() - t0, len(record.get("lesions", [])), ", ".join(outputs))
        else:
            LOG.info("%s (%s): run of generation %d superseded (new instances arrived or the node is stopping)",
                     job.case_id, job.study_uid, job.generation)

    # -- delivery ----------------------------------------------------------------------------------------------
    def _deliver(self) -> None:
        while not self.stopping.is_set():
            job = self.queue.next_delivery()
            if job is None:
                self.stopping.wait(self.tick)
                continue
            self.deliver(job)

    def deliver(self, job: Job) -> bool:
        """Send one ``done`` study's outputs; on failure schedule the next try. Returns whether it was sent."""
        folder = self.spool.result_dir(job.case_id, job.generation)
        paths = [os.path.join(folder, n) for n in job.outputs]
        try:
            missing = [p for p in paths if not os.path.isfile(p)]
            if missing:
                raise FileNotFoundError(f"{missing[0]}: result file missing")
            if paths:
                self.destination.send(paths)
        except Exception as e:  # noqa: BLE001 - every failure is retried; the queue shows the reason
            attempts = job.attempts + 1
            delay = retry_delay(attempts, self.config.retry_initial_s, self.config.retry_max_s)
            if self.queue.delivery_failed(job, one_line(e), time.time() + delay):
                LOG.warning("%s (%s): delivery %d to %s failed, next try in %.0f s: %s", job.case_id,
                            job.study_uid, attempts, self.config.destination.describe(), delay, one_line(e))
            return False
        if self.queue.delivered(job):
            LOG.info("%s (%s): sent %s to %s", job.case_id, job.study_uid, ", ".join(job.outputs),
                     self.config.destination.describe())
        return True

