"""``nnunet-liver-node``: the DICOM node (``run``), its queue (``status``, ``requeue``) and a settings template
(``example-config``). Deployment: DEPLOY.md beside this file."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from typing import List, Optional

from nnunet_liver.utils.io import InputError, run_cli

PROG = "nnunet-liver-node"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="A DICOM node for liver lesion detection: studies arrive by C-STORE, SEG + SR go back "
                               "to the destination (C-STORE or STOW-RS); a persistent queue survives restarts.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="listen and detect until SIGTERM / SIGINT")
    run.add_argument("-c", "--config", required=True, help="the node's settings (JSON; see example-config)")
    status = sub.add_parser("status", help="print the queue: every study's state, instances, runs, delivery")
    status.add_argument("-c", "--config", required=True)
    status.add_argument("--state", nargs="+", default=None, help="only studies in these states")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    requeue = sub.add_parser("requeue", help="run studies again (e.g. failed ones after fixing the settings)")
    requeue.add_argument("-c", "--config", required=True)
    requeue.add_argument("case", nargs="+", help="the node's case ids (as status prints them)")
    example = sub.add_parser("example-config", help="print a complete settings file with every default")
    example.add_argument("--spool", default="/var/lib/nnunet-liver-node")
    example.add_argument("--model", default="demo")
    return p


def _open_queue(config_path: str):
    from nnunet_liver.node.config import load_config
    from nnunet_liver.node.queue import StudyQueue

    cfg = load_config(config_path)
    db = os.path.join(cfg.spool, "queue.sqlite3")
    if not os.path.isfile(db):
        raise InputError(f"{db}: no queue yet (the node has not run with this spool)")
    return cfg, StudyQueue(db)


def _when(t: Optional[float]) -> str:
    return "-" if t is None else datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def format_status(cfg, counts: dict, records: list) -> str:
    """The table ``nnunet-liver-node status`` prints."""
    head = (f"{PROG} {cfg.ae_title}: spool {cfg.spool}; {sum(counts.values())} studies: "
            + ", ".join(f"{n} {s}" for s, n in counts.items()))
    lines = [head, f"{'case':<13} {'state':<9} {'inst':>5} {'gen':>3} {'runs':>4}  {'last instance':<19}  "
                   f"{'sent / next try':<19}  study UID; reason"]
    for r in records:
        delivery = _when(r.sent) if r.state == "sent" else (
            f"try {r.send_attempts + 1} {_when(r.next_send)[11:]}" if r.state == "done" else "-")
        reason = r.error if r.state == "failed" else (r.send_error if r.state == "done" and r.send_error else "")
        lines.append(f"{r.case_id:<13} {r.state:<9} {r.instances:>5} {r.generation:>3} {r.runs:>4}  "
                     f"{_when(r.last_received):<19}  {delivery:<19}  {r.study_uid}" + (f"; {reason}" if reason else ""))
    return "\n".join(lines)


def _status(args) -> int:
    cfg, queue = _open_queue(args.config)
    try:
        records, counts = queue.records(args.state), queue.counts()
    finally:
        queue.close()
    if args.json:
        print(json.dumps({"counts": counts, "studies": [r.to_dict() for r in records]}, indent=2))
    else:
        print(format_status(cfg, counts, records))
    return 0


def _requeue(args) -> int:
    cfg, queue = _open_queue(args.config)
    try:
        for case in args.case:
            if not queue.requeue(case):
                raise InputError(f"{case}: no such study in the queue, or it is receiving / running (status shows "
                                 f"its state)")
            print(f"{PROG}: {case}: queued again")
    finally:
        queue.close()
    return 0


def _run(args) -> int:
    from nnunet_liver.node.config import load_config
    from nnunet_liver.node.service import Node

    from nnunet_liver.node.logs import setup_logging

    cfg = load_config(args.config)
    setup_logging(cfg.log_level)
    return Node(cfg).run()


def _example(args) -> int:
    from nnunet_liver.node.config import example_config

    print(json.dumps(example_config(spool=args.spool, model=args.model), indent=2))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    work = {"run": _run, "status": _status, "requeue": _requeue, "example-config": _example}[args.command]
    return run_cli(PROG, lambda: work(args))


if __name__ == "__main__":
    sys.exit(main())
