"""The DICOM node and ``nnunet-liver-detect --dicomweb`` against a real Orthanc, end to end.

Run by test_node_orthanc.py inside a private network namespace (Orthanc listens on every interface), with Orthanc
unpacked by .ci/run; not collected on its own (the file name does not start with ``test_``). Every node is a real
``nnunet-liver-node run`` process with a rule model (:mod:`nnunet_liver.testing.node`) whose lesions are the blocks
painted into the phantoms. Deadlines only bound a hang; no assertion is about time.
"""
import json
import os
import re
import threading
import time

import pydicom
import pytest

from nnunet_liver.testing.dicom_study import PATIENT
from nnunet_liver.testing.netns import inside_netns
from nnunet_liver.testing.node import (NodeProcess, echo, node_settings, store_scu, write_node_model,
                                       write_node_study)
from nnunet_liver.testing.orthanc import Orthanc, find_orthanc

pytestmark = pytest.mark.skipif(not inside_netns(), reason="run by test_node_orthanc.py in a private network namespace")

REALDATA = os.environ.get("NNUNET_LIVER_REALDATA",
                          os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "realdata"))
HCC048 = os.path.join(REALDATA, "hcc048_pv_dicom")
ORTHANC_PEER = [{"ae_title": "ORTHANC", "host": "127.0.0.1"}]
#: nodes the shared Orthanc knows: name -> port
NODES = {"NODE": 11112, "NODEV": 11113, "NODEK": 11114, "NODEF": 11116}
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"  # ours; the phantom's dose report is another SR
IDENTIFYING = (PATIENT["name"], PATIENT["id"], PATIENT["birth_date"], "Doe", "Patient_01")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("orthanc")
    return {"root": root, "model": write_node_model(str(root / "model4")),
            "model_v": write_node_model(str(root / "model_v"), ("V",))}


def start_node(work, name, port, model=None, destination=None, ready="echo", **overrides):
    folder = work["root"] / name
    settings = node_settings(str(folder), model or work["model"], port,
                             destination or {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242},
                             ORTHANC_PEER, **overrides)
    return NodeProcess(settings, str(folder / "node.log")).start(ready=ready)


@pytest.fixture(scope="module")
def orthanc(work):
    server = Orthanc(find_orthanc(), str(work["root"] / "orthanc"),
                     modalities={k: ("NNLIVER", "127.0.0.1", p) for k, p in NODES.items()}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def node(work, orthanc):
    proc = start_node(work, "node", NODES["NODE"])
    yield proc
    assert proc.terminate() == 0  # SIGTERM stops it cleanly
    assert "stopped; queued again for the next start: none" in proc.tail()
    for text in IDENTIFYING:  # the whole log of the shared node, every scenario's studies
        assert text not in proc.tail(10 ** 7)


def case_of(records, study_uid):
    found = [r for r in records.values() if r["study_uid"] == study_uid]
    return found[0] if found else None


def wait_state(node, study_uid, states, what=None, **kw):
    def ok(records):
        rec = case_of(records, study_uid)
        return rec is not None and rec["state"] in states
    return case_of(node.wait_for(ok, what or f"study {study_uid} in {states}", **kw), study_uid)


def wait_tallies(node, offset, held, timeout=60.0):
    """(stored, already held) summed over the associations the node logged after ``offset`` (the end of each
    association is logged just after the sender sees it released: poll until ``held`` add up)."""
    deadline = time.time() + timeout
    while True:
        lines = re.findall(r"ended: (\d+) stored, (\d+) already held", node.tail(10 ** 7)[offset:])
        total = tuple(sum(int(x[i]) for x in lines) for i in (0, 1))
        if total[1] >= held or time.time() > deadline:
            return total
        time.sleep(0.05)


def ct_images(folder):
    """SOPInstanceUIDs of the CT Image Storage files under ``folder``."""
    headers = [pydicom.dcmread(os.path.join(r, n), stop_before_pixels=True) for r, _, names in os.walk(folder)
               for n in names]
    return [h.SOPInstanceUID for h in headers if h.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"]


def upload(orthanc, folder):
    files = sorted(os.path.join(r, n) for r, _, names in os.walk(folder) for n in names)
    assert orthanc.upload(files) == len(files)
    return files


def check_results(orthanc, study_uid, source_series_uid, n_seg=1, n_sr=1):
    """QIDO finds exactly ``n_seg`` SEG and ``n_sr`` SR instances in the study; every SEG references the source
    series and its frame of reference; the SR references its SEG."""
    segs = orthanc.instances(study_uid, "SEG")
    srs = [i for i in orthanc.instances(study_uid, "SR") if i["00080016"]["Value"][0] == COMPREHENSIVE_3D_SR]
    assert (len(segs), len(srs)) == (n_seg, n_sr)
    source = [i for i in orthanc.instances(study_uid, "CT") if i["0020000E"]["Value"][0] == source_series_uid]
    frame = None
    if source:
        src = pydicom.dcmread(pydicom.filebase.DicomBytesIO(orthanc.instance_file(source[0]["00080018"]["Value"][0])))
        frame = src.FrameOfReferenceUID
    seg_uids = set()
    for item in segs:
        seg = pydicom.dcmread(pydicom.filebase.DicomBytesIO(orthanc.instance_file(item["00080018"]["Value"][0])))
        assert seg.StudyInstanceUID == study_uid
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source_series_uid
        assert frame is None or seg.FrameOfReferenceUID == frame
        assert seg.PatientBirthDate == "" and seg.PatientSex == ""
        seg_uids.add(seg.SOPInstanceUID)
    for item in srs:
        sr = pydicom.dcmread(pydicom.filebase.DicomBytesIO(orthanc.instance_file(item["00080018"]["Value"][0])))
        evidence = {i.ReferencedSOPInstanceUID for e in sr.CurrentRequestedProcedureEvidenceSequence
                    for s in e.ReferencedSeriesSequence for i in s.ReferencedSOPSequence}
        assert seg_uids <= evidence
    return segs, srs


def test_phantom_study_through_orthanc_and_back(work, orthanc, node):
    study = write_node_study(str(work["root"] / "s0"), seed=0)
    upload(orthanc, work["root"] / "s0")
    job = orthanc.send_study("NODE", study["study_uid"])
    assert job["FailedInstancesCount"] == 0
    rec = wait_state(node, study["study_uid"], {"sent"})
    assert (rec["generation"], rec["runs"], rec["refused"]) == (0, 1, 0)
    assert rec["outputs"] == [f"{rec['case_id']}_seg.dcm", f"{rec['case_id']}_sr.dcm"]
    spooled = os.listdir(os.path.join(work["root"], "node", "spool", "incoming", rec["case_id"]))
    ct = ct_images(work["root"] / "s0")  # four phases, the 10 mm reconstruction, the scouts; no dose report
    assert rec["instances"] == len(spooled) == len(ct) and sorted(spooled) == sorted(f"{u}.dcm" for u in ct)
    check_results(orthanc, study["study_uid"], study["series"]["V"])
    # the same study again (a router that sends it twice): nothing stored twice, nothing run twice
    before = len(node.tail(10 ** 7))
    orthanc.send_study("NODE", study["study_uid"])
    again = case_of(node.records(), study["study_uid"])
    assert {k: again[k] for k in ("state", "instances", "generation", "runs", "sent")} == \
        {k: rec[k] for k in ("state", "instances", "generation", "runs", "sent")}
    assert wait_tallies(node, before, len(ct)) == (0, len(ct))
    check_results(orthanc, study["study_uid"], study["series"]["V"])
    table = node.status()
    assert table[rec["case_id"]]["state"] == "sent"


def test_refused_study_fails_with_its_reason_and_the_node_goes_on(work, orthanc, node):
    broken = write_node_study(str(work["root"] / "s1"), seed=1, extras=False)
    for path in sorted((work["root"] / "s1" / "series3").iterdir())[:3]:  # files of another patient mixed in
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.PatientName = "OTHER-0815", "Roe^Richard"
        ds.save_as(path)
    upload(orthanc, work["root"] / "s1")
    # Orthanc files the three as a study of the other patient (same StudyInstanceUID): send both of its studies
    found = orthanc.session.post(f"{orthanc.url}/tools/lookup", data=broken["study_uid"]).json()
    both = [x["ID"] for x in found if x["Type"] == "Study"]
    assert len(both) == 2
    orthanc.send_to_modality("NODE", both)
    rec = wait_state(node, broken["study_uid"], {"failed"})
    assert "different patients" in rec["error"] and "\n" not in rec["error"] and rec["outputs"] == []
    assert "OTHER-0815" not in rec["error"] and "Roe" not in rec["error"] and "Roe" not in node.tail(10 ** 7)
    good = write_node_study(str(work["root"] / "s2"), seed=2, extras=False)
    upload(orthanc, work["root"] / "s2")
    orthanc.send_study("NODE", good["study_uid"])
    wait_state(node, good["study_uid"], {"sent"})
    check_results(orthanc, good["study_uid"], good["series"]["V"])
    assert orthanc.instances(broken["study_uid"], "SEG") == [] and node.alive()


def test_late_instances_reopen_the_study_and_replace_its_results(work, orthanc, node):
    study = write_node_study(str(work["root"] / "s3"), seed=3, extras=False)
    upload(orthanc, work["root"] / "s3")
    orthanc_study = orthanc.study_id(study["study_uid"])
    series = {s["MainDicomTags"]["SeriesInstanceUID"]: s["ID"]
              for s in orthanc.session.get(f"{orthanc.url}/studies/{orthanc_study}/series").json()}
    delayed = series.pop(study["series"]["D"])
    orthanc.send_to_modality("NODE", list(series.values()))
    first = wait_state(node, study["study_uid"], {"failed"})  # the 4-phase model needs D
    assert first["error"] and first["runs"] == 1
    orthanc.send_to_modality("NODE", [delayed])  # the delayed phase arrives late
    rec = wait_state(node, study["study_uid"], {"sent"})
    assert (rec["generation"], rec["runs"], rec["instances"]) == (1, 2, 24 * 4)
    results = os.path.join(work["root"], "node", "spool", "results")
    assert sorted(n for n in os.listdir(results) if n.startswith(rec["case_id"])) == [f"{rec['case_id']}.1"]
    with open(os.path.join(results, f"{rec['case_id']}.1", f"{rec['case_id']}.json"), encoding="utf-8") as f:
        assert json.load(f)["phases_present"] == ["NC", "A", "V", "D"]
    check_results(orthanc, study["study_uid"], study["series"]["V"])


def test_two_studies_interleaved_on_two_associations(work, orthanc, node):
    from pynetdicom import AE, StoragePresentationContexts, evt
    from pydicom.uid import JPEG2000Lossless, RLELossless

    from nnunet_liver.node.sender import no_delay

    studies = [write_node_study(str(work["root"] / f"s{k}"), seed=k, extras=False) for k in (4, 5)]
    files = [sorted(str(p) for p in (work["root"] / f"s{k}").rglob("*") if p.is_file()) for k in (4, 5)]
    ae = AE(ae_title="ORTHANC")
    ae.requested_contexts = StoragePresentationContexts[:100]
    for syntax in (RLELossless, JPEG2000Lossless):
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", syntax)
    assocs = [ae.associate("127.0.0.1", NODES["NODE"], ae_title="NNLIVER",
                           evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)]) for _ in studies]
    assert all(a.is_established for a in assocs)
    statuses = [[], []]

    def send(k, f):
        statuses[k].append(int(assocs[k].send_c_store(f).Status))

    for i in range(max(map(len, files))):  # instance i of both studies at once, each on its own association
        threads = [threading.Thread(target=send, args=(k, files[k][i])) for k in (0, 1) if i < len(files[k])]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for a in assocs:
        a.release()
    assert statuses == [[0] * len(files[0]), [0] * len(files[1])]
    for study, f in zip(studies, files):
        rec = wait_state(node, study["study_uid"], {"sent"})
        assert rec["instances"] == len(f) and rec["runs"] == 1
        check_results(orthanc, study["study_uid"], study["series"]["V"])


@pytest.mark.skipif(not os.path.isdir(HCC048), reason="realdata hcc048_pv_dicom not available")
def test_real_ct_through_orthanc_and_back(work, orthanc):
    node = start_node(work, "node_v", NODES["NODEV"], model=work["model_v"])
    try:
        files = sorted(os.path.join(HCC048, n) for n in os.listdir(HCC048) if n.endswith(".dcm"))
        assert orthanc.upload(files) == 89
        source = pydicom.dcmread(files[0], stop_before_pixels=True)
        orthanc.send_study("NODEV", source.StudyInstanceUID)
        rec = wait_state(node, source.StudyInstanceUID, {"sent", "failed"})
        assert rec["state"] == "sent", rec["error"]
        assert rec["instances"] == 89
        check_results(orthanc, source.StudyInstanceUID, source.SeriesInstanceUID)
    finally:
        assert node.terminate() == 0
    assert "Patient_01" not in node.tail(10 ** 7)


def test_dicomweb_pull_and_push_with_basic_authentication(work, monkeypatch, tmp_path):
    from nnunet_liver.inference.cli import main as detect
    from nnunet_liver.dicom.web import ENV_PASSWORD, ENV_USER, StowError, make_client, store_files

    server = Orthanc(find_orthanc(), str(work["root"] / "orthanc_web"), http_port=8043, dicom_port=4243,
                     users={"alice": "wonderland"}).start()
    try:
        study = write_node_study(str(work["root"] / "s6"), seed=6)
        upload(server, work["root"] / "s6")
        args = ["--dicomweb", server.dicomweb_url, "--push", "-m", work["model"], "--patch-model", "none",
                "--device", "cpu", "--disable-tta", "--no-report"]
        # no credentials: HTTP 401 before the model loads, bad input
        assert detect(args + ["--study", study["study_uid"], "-o", str(tmp_path / "anonymous")]) == 2
        assert not (tmp_path / "anonymous").exists()
        monkeypatch.setenv(ENV_USER, "alice")
        monkeypatch.setenv(ENV_PASSWORD, "wonderland")
        unknown = tmp_path / "unknown"
        assert detect(args + ["--study", "1.2.3.999", "-o", str(unknown)]) == 2  # not on the server
        assert "not found" in (unknown / "summary.csv").read_text(encoding="utf-8")
        out = tmp_path / "out"
        assert detect(args + ["--study", study["study_uid"], "-o", str(out)]) == 0
        uid = study["study_uid"]
        assert (out / f"{uid}.json").is_file() and not [n for n in os.listdir(out) if n.startswith(".tmp")]
        check_results(server, uid, study["series"]["V"])
        rec = json.loads((out / f"{uid}.json").read_text(encoding="utf-8"))
        assert rec["dicom"]["study_uid"] == uid and len(rec["lesions"]) == 2
        # a STOW-RS answer that lists a failed instance is an error: a SEG of another study stored into this one
        seg = pydicom.dcmread(out / f"{uid}_seg.dcm")
        seg.StudyInstanceUID, stray = "1.2.826.0.1.3680043.8.498.424242", tmp_path / "stray.dcm"
        seg.save_as(stray)
        with pytest.raises(StowError, match=r"refused 1 instance\(s\)"):
            store_files(make_client(server.dicomweb_url), [str(stray)], study_uid=uid)
    finally:
        server.stop()


def test_node_killed_during_detection_finishes_the_study_once(work, orthanc):
    node = start_node(work, "node_k", NODES["NODEK"])
    study = write_node_study(str(work["root"] / "s7"), seed=7)
    upload(orthanc, work["root"] / "s7")
    orthanc.send_study("NODEK", study["study_uid"])
    running = wait_state(node, study["study_uid"], {"running", "done", "sent"}, poll=0.01)
    node.kill()  # SIGKILL: no clean-up at all
    assert running["state"] == "running" and case_of(node.records(), study["study_uid"])["state"] == "running"
    node.start()
    rec = wait_state(node, study["study_uid"], {"sent"})
    assert (rec["runs"], rec["generation"]) == (1, 0)  # the killed run never finished; the study ran once
    check_results(orthanc, study["study_uid"], study["series"]["V"])  # one SEG, one SR
    assert "queued again: " + rec["case_id"] in node.tail()
    # SIGTERM during detection: a clean stop, the study queued again and run at the next start
    second = write_node_study(str(work["root"] / "s8"), seed=8, extras=False)
    upload(orthanc, work["root"] / "s8")
    orthanc.send_study("NODEK", second["study_uid"])
    running = wait_state(node, second["study_uid"], {"running", "done", "sent"}, poll=0.01)
    assert node.terminate() == 0
    stopped = case_of(node.records(), second["study_uid"])
    assert running["state"] == "running" and stopped["state"] == "queued"
    node.start()
    assert wait_state(node, second["study_uid"], {"sent"})["runs"] == 1
    check_results(orthanc, second["study_uid"], second["series"]["V"])
    assert node.terminate() == 0


def test_the_documented_auto_routing_sends_each_study_once(work):
    """DEPLOY.md's Lua script in Orthanc: a stored study goes to the node when stable, the results come back into
    it, Orthanc sends the study again when it is stable again, and the node does not run it twice."""
    deploy = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "nnunet_liver", "node", "DEPLOY.md")
    with open(deploy, encoding="utf-8") as f:
        (lua,) = re.findall(r"```lua\n(.*?)```", f.read(), re.S)
    script = work["root"] / "nnliver.lua"
    script.write_text(lua, encoding="utf-8")
    server = Orthanc(find_orthanc(), str(work["root"] / "orthanc_lua"), http_port=8046, dicom_port=4246,
                     modalities={"NNLIVER": ("NNLIVER", "127.0.0.1", 11117)}, lua_scripts=[str(script)]).start()
    node = start_node(work, "node_lua", 11117, destination={"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4246})
    try:
        study = write_node_study(str(work["root"] / "s11"), seed=11)
        offset = len(node.tail(10 ** 7))
        upload(server, work["root"] / "s11")  # nothing else: Orthanc routes it
        rec = wait_state(node, study["study_uid"], {"sent"})
        check_results(server, study["study_uid"], study["series"]["V"])
        ct = ct_images(work["root"] / "s11")
        assert wait_tallies(node, offset, len(ct)) == (len(ct), len(ct))  # the second routing: all held
        again = case_of(node.records(), study["study_uid"])
        assert (again["runs"], again["generation"], again["state"]) == (1, 0, "sent") and rec["runs"] == 1
        check_results(server, study["study_uid"], study["series"]["V"])
    finally:
        node.terminate()
        server.stop()


def test_destination_down_while_sending_loses_nothing(work):
    """The destination is down from the start: every delivery fails and is retried; once it is up, the results
    arrive, once."""
    server = Orthanc(find_orthanc(), str(work["root"] / "orthanc_down"), http_port=8044, dicom_port=4244)
    node = start_node(work, "node_d", 11115, destination={"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4244})
    try:
        study = write_node_study(str(work["root"] / "s9"), seed=9, extras=False)
        files = sorted(str(p) for p in (work["root"] / "s9").rglob("*") if p.is_file())
        assert store_scu(11115, files) == [0] * len(files)
        failing = node.wait_for(lambda r: (case_of(r, study["study_uid"]) or {}).get("send_attempts", 0) >= 2,
                                "failed deliveries")
        rec = case_of(failing, study["study_uid"])
        assert rec["state"] == "done" and "ORTHANC@127.0.0.1:4244" in rec["send_error"]
        server.start()  # up: the next try delivers
        rec = wait_state(node, study["study_uid"], {"sent"})
        assert rec["runs"] == 1 and rec["send_attempts"] >= 2
        upload(server, work["root"] / "s9")  # the source too, for the frame of reference check
        check_results(server, study["study_uid"], study["series"]["V"])
    finally:
        node.terminate()
        server.stop()


def test_peers_not_allowed_and_a_full_disk_are_refused(work, orthanc, node):
    study = write_node_study(str(work["root"] / "s10"), seed=10, extras=False)
    rogue = Orthanc(find_orthanc(), str(work["root"] / "orthanc_rogue"), http_port=8045, dicom_port=4245,
                    ae_title="ROGUE", modalities={"NODE": ("NNLIVER", "127.0.0.1", NODES["NODE"])}).start()
    try:
        upload(rogue, work["root"] / "s10")
        with pytest.raises(Exception):  # Orthanc's store job fails: the node rejects the association
            rogue.send_study("NODE", study["study_uid"])
    finally:
        rogue.stop()
    assert case_of(node.records(), study["study_uid"]) is None
    assert echo(NODES["NODE"], calling="ORTHANC", bind="127.0.0.2") is None  # right title, wrong host
    assert echo(NODES["NODE"], calling="ORTHANC") == 0
    # a node whose disk is "full" (min_free_mb beyond any disk): it refuses every association, C-ECHO included
    full = start_node(work, "node_f", NODES["NODEF"], min_free_mb=1e12, ready="log")
    try:
        upload(orthanc, work["root"] / "s10")
        with pytest.raises(Exception):
            orthanc.send_study("NODEF", study["study_uid"])
        assert full.records() == {} and full.alive()
        assert "below min_free_mb" in full.tail()
    finally:
        assert full.terminate() == 0

