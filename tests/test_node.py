"""The DICOM node's parts without a model: settings, spool, queue, back-off, DICOMweb credentials and STOW checks, and
the Storage SCP over real DICOM associations on loopback (pynetdicom as the sending modality). The whole node with
detection, against a real Orthanc: test_node_orthanc.py."""
import json
import logging
import os
import threading
from pathlib import Path

import pydicom
import pytest

from nnunet_liver.dicom import web as dicomweb
from nnunet_liver.dicom.index import is_uid
from nnunet_liver.node.cli import main as node_main
from nnunet_liver.node.config import Peer, example_config, load_config
from nnunet_liver.node.queue import DONE, FAILED, QUEUED, RECEIVED, RUNNING, SENT, StudyQueue
from nnunet_liver.node.scp import STATUS_OUT_OF_RESOURCES, StorageListener
from nnunet_liver.node.sender import retry_delay
from nnunet_liver.node.spool import Spool
from nnunet_liver.testing.dicom_study import PATIENT
from nnunet_liver.utils.io import InputError

PEERS = [{"ae_title": "ORTHANC", "host": "127.0.0.1"}]
DEST = {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}


def write_settings(folder, **values):
    settings = {"allowed_peers": PEERS, "destination": DEST, "spool": "spool", **values}
    path = folder / "node.json"
    path.write_text(json.dumps(settings), encoding="utf-8")
    return str(path)


# -- settings ---------------------------------------------------------------------------------------------------------
def test_settings_defaults_and_relative_spool(tmp_path):
    cfg = load_config(write_settings(tmp_path))
    assert cfg.spool == str(tmp_path / "spool") and cfg.stable_age == 60 and cfg.workers == 1
    assert cfg.destination.kind == "dicom" and cfg.patch_model_dir() == "demo"  # the bundled pair with model demo
    assert load_config(write_settings(tmp_path, patch_model="none")).patch_model_dir() is None
    cfg = load_config(write_settings(tmp_path, device=["cuda:0", "cuda:1"], workers=3))
    assert [cfg.device_of(k) for k in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert load_config(write_settings(tmp_path, destination={"dicomweb": "https://pacs/dicom-web/"})).destination \
        .dicomweb == "https://pacs/dicom-web"
    again = tmp_path / "again"
    again.mkdir()
    (again / "node.json").write_text(json.dumps(example_config(spool=str(tmp_path / "s"))), encoding="utf-8")
    assert load_config(str(again / "node.json")).to_dict() == example_config(spool=str(tmp_path / "s"))


@pytest.mark.parametrize("values, message", [
    ({"allowed_peers": []}, "at least one peer"),
    ({"port": 70000}, "not a TCP port"),
    ({"ae_title": "A" * 17}, "not an AE title"),
    ({"stable_age": -1}, "must be a number >= 0"),
    ({"workers": 0}, "integer >= 1"),
    ({"portt": 1}, "unknown setting(s) portt"),
    ({"destination": {"ae_title": "PACS", "host": "h"}}, "missing port"),
    ({"destination": {"dicomweb": "ftp://x"}}, "http:// or https://"),
    ({"allowed_peers": [{"ae_title": "X", "host": "no-such-host.invalid"}]}, "no-such-host.invalid"),
    ({"retry_initial_s": 5, "retry_max_s": 1}, "retry_max_s"),
    ({"schema_version": 2}, "schema_version 2"),
])
def test_settings_errors_name_the_file_and_the_key(tmp_path, values, message):
    path = write_settings(tmp_path, **values)
    with pytest.raises(InputError) as e:
        load_config(path)
    assert message in str(e.value) and path in str(e.value)


def test_peers_match_title_and_address():
    exact = Peer.parse({"ae_title": "ORTHANC", "host": "10.0.0.5"}, "t")
    assert exact.allows("ORTHANC", "10.0.0.5") and exact.allows("ORTHANC  ", "::ffff:10.0.0.5")
    assert not exact.allows("ORTHANC", "10.0.0.6") and not exact.allows("OTHER", "10.0.0.5")
    net = Peer.parse({"ae_title": "*", "host": "10.1.0.0/16"}, "t")
    assert net.allows("ANY", "10.1.200.3") and not net.allows("ANY", "10.2.0.1")
    assert Peer.parse({"ae_title": "X", "host": "localhost"}, "t").allows("X", "127.0.0.1")
    assert Peer.parse({"ae_title": "X"}, "t").allows("X", "192.168.1.1")


# -- spool ------------------------------------------------------------------------------------------------------------
def test_uids_are_the_only_file_names():
    assert is_uid("1.2.840.10008.5.1.4.1.1.2") and is_uid("0.1")
    for bad in ("", "../x", "1.02", "1..2", "1.2.", "a.b", "1/2", "1" * 65, None):
        assert not is_uid(bad)


def test_spool_store_is_atomic_and_deduplicated(tmp_path):
    spool = Spool(str(tmp_path))
    assert spool.store("study-000001", "1.2.3", b"first") is True
    assert spool.store("study-000001", "1.2.3", b"second") is False  # a re-sent instance is stored once
    assert (tmp_path / "incoming" / "study-000001" / "1.2.3.dcm").read_bytes() == b"first"
    assert spool.count("study-000001") == 1 and spool.has("study-000001", "1.2.3")
    assert os.listdir(tmp_path / "incoming" / "study-000001") == ["1.2.3.dcm"]
    with pytest.raises(ValueError):
        spool.store("study-000001", "../../evil", b"x")
    (tmp_path / "incoming" / "study-000001" / ".tmp_half").write_bytes(b"half")  # a killed node's leftovers
    run = spool.new_run_dir("study-000001", 0)
    assert spool.clean_temporary() == (1, 1) and not os.path.exists(run)


def test_spool_keeps_only_the_latest_generation(tmp_path):
    spool = Spool(str(tmp_path))
    for gen in (0, 1):
        run = spool.new_run_dir("study-000002", gen)
        Path(run, "study-000002_sr.dcm").write_bytes(b"")
        spool.keep_run(run, "study-000002", gen)
    assert sorted(os.listdir(tmp_path / "results")) == ["study-000002.1"]
    assert spool.result_files("study-000002", 1) == [str(tmp_path / "results" / "study-000002.1" /
                                                         "study-000002_sr.dcm")]


# -- queue ------------------------------------------------------------------------------------------------------------
def test_queue_life_of_a_study(tmp_path):
    q = StudyQueue(str(tmp_path / "q.sqlite3"))
    case = q.ensure("1.2.3", now=100.0)
    assert case == "study-000001" and q.ensure("1.2.3") == case
    for t in (100.0, 101.0):
        assert q.instance_stored(case, now=t) is False
    assert q.promote_stable(60, now=160.5) == []  # 59.5 s quiet: not yet complete
    assert q.promote_stable(60, now=161.0) == [(case, QUEUED)]
    job = q.claim(now=170.0)
    assert (job.case_id, job.generation) == (case, 0) and q.claim() is None
    assert q.record(case).state == RUNNING
    assert q.finish(job, ["study-000001_seg.dcm", "study-000001_sr.dcm"], now=175.0)
    rec = q.record(case)
    assert (rec.state, rec.runs, rec.seconds, rec.instances) == (DONE, 1, 5.0, 2)
    delivery = q.next_delivery(now=175.0)
    assert delivery.outputs == ("study-000001_seg.dcm", "study-000001_sr.dcm") and delivery.attempts == 0
    assert q.delivery_failed(delivery, "PACS@h:1: did not answer", retry_at=180.0)
    assert q.next_delivery(now=179.0) is None
    delivery = q.next_delivery(now=180.0)
    assert delivery.attempts == 1 and q.record(case).send_error == "PACS@h:1: did not answer"
    assert q.delivered(delivery, now=181.0) and q.record(case).state == SENT
    assert q.counts() == {RECEIVED: 0, QUEUED: 0, RUNNING: 0, DONE: 0, FAILED: 0, SENT: 1}


def test_queue_late_instance_supersedes_a_running_study(tmp_path):
    q = StudyQueue(str(tmp_path / "q.sqlite3"))
    case = q.ensure("1.2.3", now=0.0)
    q.instance_stored(case, now=0.0)
    q.promote_stable(1, now=2.0)
    job = q.claim(now=2.0)
    assert q.instance_stored(case, now=3.0) is True  # re-opened
    assert q.finish(job, ["x"], now=4.0) is False  # the earlier generation's run is discarded
    rec = q.record(case)
    assert (rec.state, rec.generation, rec.runs, rec.instances) == (RECEIVED, 1, 0, 2)
    q.promote_stable(1, now=5.0)
    assert q.claim(now=5.0).generation == 1


def test_queue_survives_a_kill(tmp_path):
    path = str(tmp_path / "q.sqlite3")
    q = StudyQueue(path)
    a, b = q.ensure("1.1"), q.ensure("1.2")
    for case in (a, b):
        q.instance_stored(case, now=0.0)
    q.promote_stable(1, now=5.0)
    job = q.claim(now=5.0)
    del q  # the process dies here: no close, no commit pending
    q = StudyQueue(path)
    assert q.requeue_running() == [job.case_id]
    assert [r.state for r in q.records()] == [QUEUED, QUEUED]
    assert q.claim(now=6.0).case_id == a  # the oldest again, once
    assert q.fail(q.claim(now=6.0), "study x: no axial CT image series") is True
    assert q.record(b).error == "study x: no axial CT image series"
    assert q.requeue(b) and (q.record(b).state, q.record(b).generation) == (QUEUED, 1)
    assert not q.requeue(a) and not q.requeue("study-999999")  # running / unknown


def test_queue_refused_instances_fail_the_study(tmp_path):
    q = StudyQueue(str(tmp_path / "q.sqlite3"))
    case = q.ensure("1.2.3", now=0.0)
    q.instance_stored(case, now=0.0)
    q.instance_refused(case, now=1.0)
    assert q.promote_stable(1, now=2.0) == [(case, FAILED)]
    assert "0xA700" in q.record(case).error and "send the study again" in q.record(case).error
    assert q.instance_stored(case, now=3.0) is True  # re-sent: re-opened, the refusal forgotten
    assert q.promote_stable(1, now=4.0) == [(case, QUEUED)]


def test_expired_studies(tmp_path):
    q = StudyQueue(str(tmp_path / "q.sqlite3"))
    case = q.ensure("1.2.3", now=0.0)
    q.instance_stored(case, now=0.0)
    q.promote_stable(1, now=1.0)
    q.finish(q.claim(now=1.0), ["a"], now=2.0)
    q.delivered(q.next_delivery(now=2.0), now=3.0)
    assert q.expired(10, now=12.0) == [] and q.expired(10, now=13.0) == [case]
    q.mark_purged(case)
    assert q.expired(10, now=100.0) == []


def test_retry_delay_doubles_up_to_the_maximum():
    assert [retry_delay(a, 10, 600) for a in (1, 2, 3, 4, 7, 8, 1000)] == [10, 20, 40, 80, 600, 600, 600]


# -- DICOMweb credentials and STOW responses ---------------------------------------------------------------------------
def test_credentials_from_a_file_or_the_environment(tmp_path):
    import requests

    token = tmp_path / "token.json"
    token.write_text('{"token": "s3cret"}', encoding="utf-8")
    auth = dicomweb.read_auth(str(token), environ={})
    prepared = auth(requests.Request("GET", "http://x/").prepare())
    assert prepared.headers["Authorization"] == "Bearer s3cret" and "s3cret" not in repr(auth)
    basic = tmp_path / "basic.json"
    basic.write_text('{"username": "alice", "password": "pw"}', encoding="utf-8")
    assert isinstance(dicomweb.read_auth(None, {dicomweb.ENV_AUTH_FILE: str(basic)}), requests.auth.HTTPBasicAuth)
    assert dicomweb.read_auth(None, {dicomweb.ENV_TOKEN: "t"})(requests.Request("GET", "http://x/").prepare()) \
        .headers["Authorization"] == "Bearer t"
    assert dicomweb.read_auth(None, {dicomweb.ENV_USER: "a", dicomweb.ENV_PASSWORD: "b"}).username == "a"
    assert dicomweb.read_auth(None, {}) is None  # requests then reads ~/.netrc
    with pytest.raises(InputError, match=dicomweb.ENV_PASSWORD):
        dicomweb.read_auth(None, {dicomweb.ENV_USER: "a"})
    bad = tmp_path / "bad.json"
    bad.write_text('{"user": "a"}', encoding="utf-8")
    with pytest.raises(InputError, match="bad.json"):
        dicomweb.read_auth(str(bad), {})


def stow_response(stored, failed=()):
    ds = pydicom.Dataset()
    ds.ReferencedSOPSequence = [pydicom.Dataset() for _ in stored]
    for item, uid in zip(ds.ReferencedSOPSequence, stored):
        item.ReferencedSOPInstanceUID = uid
    ds.FailedSOPSequence = [pydicom.Dataset() for _ in failed]
    for item, uid in zip(ds.FailedSOPSequence, failed):
        item.ReferencedSOPInstanceUID, item.FailureReason = uid, 0x0110
    return ds


def test_stow_response_must_confirm_every_instance():
    dicomweb.check_stow_response(stow_response(["1.1", "1.2"]), ["1.1", "1.2"], "srv")  # Orthanc's success
    with pytest.raises(dicomweb.StowError, match=r"refused 1 instance\(s\) \(first: 1.2, failure reason 0x0110\)"):
        dicomweb.check_stow_response(stow_response(["1.1"], failed=["1.2"]), ["1.1", "1.2"], "srv")
    with pytest.raises(dicomweb.StowError, match="did not confirm 1 of 2"):
        dicomweb.check_stow_response(stow_response(["1.1"]), ["1.1", "1.2"], "srv")


# -- the Storage SCP over real associations ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from nnunet_liver.testing.node import write_node_study

    root = tmp_path_factory.mktemp("study")
    out = {}
    for name, seed in (("a", 0), ("b", 1)):
        info = write_node_study(str(root / name), seed=seed, shape=(8, 32, 32))
        files = sorted(str(p) for p in (root / name).rglob("*") if p.is_file())
        info["ct"] = [f for f in files if pydicom.dcmread(f, stop_before_pixels=True).Modality == "CT"
                      and pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"]
        info["other"] = [f for f in files if f not in info["ct"]]
        out[name] = info
    return out


@pytest.fixture
def listener(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="nnunet_liver.node")
    cfg = load_config(write_settings(tmp_path, bind="127.0.0.1", port=0, min_free_mb=1))
    spool = Spool(cfg.spool)
    queue = StudyQueue(spool.database)
    scp = StorageListener(cfg, spool, queue)
    host, port = scp.start()
    yield scp, port
    scp.stop()
    queue.close()


def associate(port, calling="ORTHANC", bind=None, called="NNLIVER"):
    from pynetdicom import AE, StoragePresentationContexts

    ae = AE(ae_title=calling)
    ae.requested_contexts = StoragePresentationContexts[:120]
    from pydicom.uid import JPEG2000Lossless, RLELossless

    for syntax in (RLELossless, JPEG2000Lossless):  # one context per syntax: a context agrees on one syntax
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", syntax)
    ae.acse_timeout = ae.network_timeout = 10
    return ae.associate("127.0.0.1", port, ae_title=called, **({"bind_address": (bind, 0)} if bind else {}))


def test_scp_stores_a_study_once_and_drops_what_is_not_ct(listener, study, caplog):
    scp, port = listener
    files = study["a"]["ct"]
    assoc = associate(port)
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(f).Status) for f in files + files[:3] + study["a"]["other"]]
    assoc.release()
    assert statuses == [0] * len(statuses)
    (rec,) = scp.queue.records()
    assert (rec.study_uid, rec.instances, rec.state) == (study["a"]["study_uid"], len(files), RECEIVED)
    folder = scp.spool.study_dir(rec.case_id)
    assert sorted(os.listdir(folder)) == sorted(f"{pydicom.dcmread(f).SOPInstanceUID}.dcm" for f in files)
    stored = pydicom.dcmread(os.path.join(folder, os.listdir(folder)[0]))
    assert stored.file_meta.TransferSyntaxUID and stored.StudyInstanceUID == study["a"]["study_uid"]
    text = caplog.text
    assert f"{len(files)} stored, 3 already held, {len(study['a']['other'])} not CT images" in text
    for identifying in (PATIENT["name"], PATIENT["id"], PATIENT["birth_date"], "Doe"):
        assert identifying not in text


@pytest.mark.parametrize("calling, bind, called", [("STRANGER", None, "NNLIVER"), ("ORTHANC", "127.0.0.2", "NNLIVER"),
                                                  ("ORTHANC", None, "SOMEONE")])
def test_scp_rejects_peers_not_allowed(listener, study, calling, bind, called, caplog):
    scp, port = listener
    assoc = associate(port, calling=calling, bind=bind, called=called)
    assert assoc.is_rejected and not assoc.is_established
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03 if called == "NNLIVER" else 0x07)
    assert scp.queue.records() == []
    if called == "NNLIVER":  # a wrong called AE title is pynetdicom's own rejection
        assert f"AE {calling!r} at 127.0.0.{2 if bind else 1}: not an allowed peer" in caplog.text


def test_scp_full_disk_rejects_and_refuses(listener, study):
    scp, port = listener
    files = study["a"]["ct"]
    assoc = associate(port)
    assert int(assoc.send_c_store(files[0]).Status) == 0
    scp.config.min_free_mb = 1e15  # the disk "fills" during the association
    assert int(assoc.send_c_store(files[1]).Status) == STATUS_OUT_OF_RESOURCES
    assert int(assoc.send_c_store(files[0]).Status) == 0  # already held: still success
    assoc.release()
    (rec,) = scp.queue.records()
    assert (rec.instances, rec.refused) == (1, 1) and scp.spool.count(rec.case_id) == 1
    assert not [n for n in os.listdir(scp.spool.study_dir(rec.case_id)) if n.startswith(".tmp")]
    refused = associate(port)  # a new association while full: rejected-transient, local limit exceeded
    rj = refused.acceptor.primitive
    assert refused.is_rejected and (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)
    assert scp.queue.promote_stable(0) == [(rec.case_id, FAILED)]


def test_scp_two_studies_interleaved_on_two_associations(listener, study):
    scp, port = listener
    a, b = study["a"]["ct"], study["b"]["ct"]
    first, second = associate(port), associate(port)
    errors = []

    def send(assoc, files):
        for f in files:
            status = assoc.send_c_store(f)
            if int(status.Status) != 0:
                errors.append(status)

    for k in range(max(len(a), len(b))):  # alternate instance by instance, each on its own association
        threads = [threading.Thread(target=send, args=(first, a[k:k + 1])),
                   threading.Thread(target=send, args=(second, b[k:k + 1]))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    first.release()
    second.release()
    assert errors == []
    counts = {r.study_uid: r.instances for r in scp.queue.records()}
    assert counts == {study["a"]["study_uid"]: len(a), study["b"]["study_uid"]: len(b)}


def test_scp_cannot_understand_an_instance_without_uids(listener, study, tmp_path):
    scp, port = listener
    ds = pydicom.dcmread(study["a"]["ct"][0])
    ds.StudyInstanceUID = "1.02.3"  # a leading zero: not a UID
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    assoc = associate(port)
    assert int(assoc.send_c_store(str(bad)).Status) == 0xC000
    assoc.release()
    assert scp.queue.records() == []


def test_status_command(tmp_path, capsys):
    path = write_settings(tmp_path)
    assert node_main(["status", "-c", path]) == 2  # no queue yet
    assert "no queue yet" in capsys.readouterr().err
    q = StudyQueue(str(tmp_path / "spool" / "queue.sqlite3")) if os.makedirs(tmp_path / "spool") is None else None
    case = q.ensure("1.2.3", now=0.0)
    q.instance_stored(case, now=0.0)
    q.promote_stable(1, now=1.0)
    q.fail(q.claim(now=1.0), "study study-000001: phase D not found")
    assert node_main(["status", "-c", path]) == 0
    out = capsys.readouterr().out
    assert "1 failed" in out and "study-000001  failed" in out and "phase D not found" in out and "1.2.3" in out
    assert node_main(["status", "-c", path, "--json", "--state", "failed"]) == 0
    assert json.loads(capsys.readouterr().out)["studies"][0]["error"] == "study study-000001: phase D not found"
    assert node_main(["requeue", "-c", path, case]) == 0 and q.record(case).state == QUEUED
    assert node_main(["requeue", "-c", path, case]) == 2


def test_log_withholds_what_libraries_quote(capsys):
    """highdicom warns with the patient's name in the text and pydicom logs invalid values: the node's log keeps
    where they came from and withholds the text."""
    import warnings

    from nnunet_liver.node.logs import setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("INFO")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn(f"The string \"{PATIENT['name']}\" is unlikely to represent the intended person name")
        logging.getLogger("pydicom").warning("Invalid value for VR PN: %r", PATIENT["id"])
        logging.getLogger("nnunet_liver.node").info("study-000001 (1.2.3): queued")
    finally:
        logging.captureWarnings(False)
        root.handlers[:], root.level = saved
    err = capsys.readouterr().err
    assert "UserWarning (text withheld" in err and "test_node.py" in err
    assert "withheld (it may quote patient data)" in err and "study-000001 (1.2.3): queued" in err
    assert PATIENT["name"] not in err and PATIENT["id"] not in err


def test_a_study_whose_first_instance_never_landed_fails(tmp_path):
    q = StudyQueue(str(tmp_path / "q.sqlite3"))
    case = q.ensure("1.2.3", now=0.0)  # the row exists, the node died before the file was written
    assert q.promote_stable(1, now=2.0) == [(case, FAILED)] and "send the study again" in q.record(case).error


@pytest.mark.parametrize("args, code, message", [
    (["-m", "demo"], 2, "give either -i CASES_DIR or --dicomweb URL"),
    (["-m", "demo", "-i", ".", "--dicomweb", "http://x/dicom-web"], 2, "give either"),
    (["-m", "demo", "-i", ".", "--study", "1.2.3"], 2, "need --dicomweb URL"),
    (["-m", "demo", "--dicomweb", "ftp://x", "--study", "1.2.3"], 2, "not an http:// or https:// URL"),
    (["-m", "demo", "--dicomweb", "http://127.0.0.1:9/dicom-web", "--study", "1.02.3"], 2, "not a DICOM UID"),
    (["-m", "demo", "--dicomweb", "http://127.0.0.1:9/dicom-web"], 2, "no study to run"),
    # nothing listens on the discard port: the run fails before the model loads, with one line
    (["-m", "/nonexistent", "--dicomweb", "http://127.0.0.1:9/dicom-web", "--study", "1.2.3"], 1, "ConnectionError"),
])
def test_detect_dicomweb_arguments(tmp_path, capsys, args, code, message):
    from nnunet_liver.inference.cli import main as detect

    assert detect(args + ["-o", str(tmp_path / "out")]) == code
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
