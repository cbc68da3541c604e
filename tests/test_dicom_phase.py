"""Contrast-phase identification: the header logic (times, time zones, midnight, route, agent, bolus delay,
descriptions), the joint assignment with its confidence and conflicts, and a small confusion study on phantom DICOM
studies with oral contrast and lipiodol (every phase subset: no wrong phase above the threshold)."""
import datetime
import itertools

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset  # noqa: E402

from nnunet_liver.dicom.index import index_studies  # noqa: E402
from nnunet_liver.dicom.phase import MIN_CONFIDENCE, Acquisition, PhaseConflict, assign_phases  # noqa: E402
from nnunet_liver.dicom.study import identify_study  # noqa: E402
from nnunet_liver.dicom.tags import (acquisition_time, agent_is_oral, bolus_delay_phases,  # noqa: E402
                                     description_phases, description_strength, route_phases, study_times)
from nnunet_liver.labels import PHASES  # noqa: E402
from nnunet_liver.phantom import generate_case  # noqa: E402
from nnunet_liver.testing.dicom_study import HONEST_DESCRIPTIONS, SERIES, subset_study, write_study  # noqa: E402
from nnunet_liver.testing.dicom_writer import new_uid, write_ct_series  # noqa: E402
from nnunet_liver.utils.io import InputError  # noqa: E402

KIDNEYS_HOMOGENEOUS = {"cortex_hu": 180.0, "medulla_share": 0.02, "excreted_contrast_cm2": 0.0}


def acq(key, liver, aorta, **kw):
    return Acquisition(key, kw.pop("number", int(key) if key.isdigit() else None), kw.pop("description", ""),
                       kw.pop("time", None), kw.pop("agent_set", None), liver, aorta, **kw)


# --- headers ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,phases,strength", [
    ("late arterial", ["A"], "strong"), ("LATE ARTERIAL PHASE", ["A"], "strong"), ("Late", ["D"], "strong"),
    ("PRE LIVER", ["NC"], "strong"), ("non-contrast abdomen", ["NC"], "strong"), ("pre-op abdomen", [], ""),
    ("PRE TACE", [], ""), ("portal venous", ["V"], "strong"), ("Delayed 5 min", ["D"], "strong"),
    ("3 MIN", ["D"], "strong"), ("equilibrium", ["D"], "strong"), ("LIVER 3 PHASE (C/A/P)", [], ""),
    ("Recon 2: LIVER 3 PHASE (C/A/P)", [], ""), ("ART Recon 3", ["A"], "weak"), ("PV 70s", ["V"], "weak"),
    ("CT ABD W/O", ["NC"], "weak"), ("Arterial/Portal", ["A", "V"], "strong"), ("prep", [], ""), ("", [], ""),
])
def test_description_phases(text, phases, strength):
    assert description_phases(text) == phases and description_strength(text) == strength


def test_route_and_agent():
    assert route_phases("Oral") == ["NC"] and route_phases("PO") == ["NC"] and route_phases("RECTAL") == ["NC"]
    assert route_phases("Oral & IV") is None and route_phases("IV") is None and route_phases("") is None
    assert agent_is_oral("Gastrografin") and agent_is_oral("ORAL CONTRAST")
    assert not agent_is_oral("Omnipaque 350") and not agent_is_oral("oral + IV iohexol") and not agent_is_oral(None)


def _ds(**kw):
    ds = Dataset()
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


@pytest.mark.filterwarnings("ignore:Invalid value for VR TM")  # the old ACR-NEMA "HH:MM:SS" is read all the same
def test_times_with_dates_time_zones_and_midnight():
    utc = datetime.datetime(2024, 3, 31, 9, 0, tzinfo=datetime.timezone.utc).timestamp()
    t, dated, source = acquisition_time(_ds(AcquisitionDate="20240331", AcquisitionTime="100000",
                                            TimezoneOffsetFromUTC="+0100"))
    assert dated and source == "AcquisitionTime" and t == utc
    # a daylight-saving change between two acquisitions: 10:00 +0100 and 11:00:30 +0200 are 30 s apart
    later, _, _ = acquisition_time(_ds(AcquisitionDate="20240331", AcquisitionTime="110030.5",
                                       TimezoneOffsetFromUTC="+0200"))
    assert later - t == pytest.approx(30.5)
    # across midnight, with dates
    a, _, _ = acquisition_time(_ds(AcquisitionDate="20240101", AcquisitionTime="235950"))
    b, _, _ = acquisition_time(_ds(AcquisitionDate="20240102", AcquisitionTime="000040"))
    assert b - a == 50.0
    # a DT with its own offset wins over the separate tags; ContentTime when there is no AcquisitionTime
    dt, _, source = acquisition_time(_ds(AcquisitionDateTime="20240331100000+0100", AcquisitionTime="120000"))
    assert source == "AcquisitionDateTime" and dt == utc
    assert acquisition_time(_ds(ContentTime="101500", StudyDate="20240102"))[2] == "ContentTime"
    assert acquisition_time(_ds(SeriesDescription="x")) is None
    assert acquisition_time(_ds(AcquisitionTime="10:15:00"))[:2] == (10 * 3600 + 15 * 60, False)
    # without dates: seconds of the day; an exam across midnight keeps its order
    assert study_times([(86390.0, False), (40.0, False), None]) == [86390.0, 86440.0, None]
    assert study_times([(36000.0, False), (36035.0, False)]) == [36000.0, 36035.0]


@pytest.mark.parametrize("delay,phases", [(-120.0, ["NC"]), (30.0, ["A"]), (70.0, ["V"]), (130.0, ["V", "D"]),
                                          (210.0, ["D"]), (5.0, None), (None, None)])
def test_bolus_delay(delay, phases):
    assert bolus_delay_phases(delay) == phases


# --- the assignment -----------------------------------------------------------------------------------------------


def test_single_portal_venous_study_called_v_with_confidence():
    """The commonest abdominal CT: one portal-venous acquisition (liver about 105 HU, aorta about 280 HU)."""
    (r,) = assign_phases([acq("1", 105.0, 280.0)]).values()
    assert r["phase"] == "V" and r["confidence"] >= MIN_CONFIDENCE
    (r,) = assign_phases([acq("1", 105.0, 280.0, kidneys=KIDNEYS_HOMOGENEOUS)]).values()
    assert r["phase"] == "V" and r["confidence"] > 0.8
    assert any("homogeneous nephrogram" in x for x in r["reasons"])


def test_golden_costs_and_confidence():
    (r,) = assign_phases([acq("1", 52.0, 45.0)]).values()
    assert r["phase"] == "NC" and r["cost"] == 0.0
    # D: aorta 45 -> 85 is 2 scales (4.0), liver 52 -> 75 is 2.3 scales (5.29); margin 9.29
    assert r["costs"]["D"] == pytest.approx(9.29, abs=1e-3)
    assert r["confidence"] == pytest.approx(1 - np.exp(-9.29 / 2), abs=1e-4)


def test_excreted_contrast_makes_a_lone_late_acquisition_delayed():
    late = dict(cortex_hu=150.0, medulla_share=0.03, excreted_contrast_cm2=8.0)
    (r,) = assign_phases([acq("1", 95.0, 140.0, kidneys=late)]).values()
    assert r["phase"] == "D" and r["confidence"] > 0.8
    (r,) = assign_phases([acq("1", 95.0, 140.0)]).values()
    assert r["confidence"] < MIN_CONFIDENCE  # without the kidneys: a weak V or a strong D, really ambiguous


def test_no_aorta_found_lowers_the_confidence():
    (r,) = assign_phases([acq("1", 110.0, float("nan"), notes=["aorta: not found"])]).values()
    assert r["confidence"] < MIN_CONFIDENCE and "aorta: not found" in r["reasons"]


def test_oral_route_agrees_with_a_non_contrast_image():
    got = assign_phases([acq("2", 53.0, 45.0, route="Oral", description="PRE LIVER"),
                         acq("4", 67.0, 385.0, route="Oral & IV"), acq("103", 138.0, 172.0, route="Oral & IV")])
    assert {k: v["phase"] for k, v in got.items()} == {"2": "NC", "4": "A", "103": "V"}
    assert all(v["confidence"] > 0.99 for v in got.values())
    assert any("oral contrast only" in x for x in got["2"]["reasons"])


@pytest.mark.parametrize("kw,words", [(dict(description="PRE CONTRAST"), "description 'PRE CONTRAST' names NC"),
                                      (dict(route="ORAL"), "oral contrast only"),
                                      (dict(bolus_delay=-60.0), "after the contrast bolus started")])
def test_a_strong_header_against_a_clear_image_is_a_conflict(kw, words):
    with pytest.raises(PhaseConflict) as e:
        assign_phases([acq("7", 70.0, 300.0, **kw)])
    message = str(e.value)
    assert "\n" not in message and "series 7" in message and words in message and "image says A" in message
    assert "--phase-map 7=PHASE" in message


def test_times_against_clear_images_are_a_conflict():
    with pytest.raises(PhaseConflict, match="acquisition times .*force phases the images contradict"):
        assign_phases([acq("1", 70.0, 300.0, time=0.0), acq("2", 52.0, 45.0, time=60.0)])
    # the same images with times in their order: fine
    got = assign_phases([acq("1", 70.0, 300.0, time=60.0), acq("2", 52.0, 45.0, time=0.0)])
    assert {k: v["phase"] for k, v in got.items()} == {"1": "A", "2": "NC"}


def test_two_arterial_runs_are_a_conflict_not_a_wrong_phase():
    with pytest.raises(PhaseConflict, match="series 2 looks like A .* as does series 1"):
        assign_phases([acq("1", 60.0, 420.0), acq("2", 75.0, 300.0), acq("3", 112.0, 170.0)])


def test_assign_phases_time_order_is_a_constraint():
    # image says A for the later one, NC for the earlier: times agree; swapped times make that impossible
    a = Acquisition("x", 1, "", 0.0, None, 52.0, 45.0)
    b = Acquisition("y", 2, "", 30.0, None, 70.0, 290.0)
    assert {k: v["phase"] for k, v in assign_phases([a, b]).items()} == {"x": "NC", "y": "A"}


def test_liver_baseline_follows_the_non_contrast_acquisition():
    """A fatty liver (30 HU before contrast) is 85 HU in the portal-venous phase: V, not D, once NC is known."""
    got = assign_phases([acq("1", 30.0, 42.0), acq("2", 85.0, 175.0)])
    assert got["2"]["phase"] == "V" and got["2"]["confidence"] > 0.9
    assert any("moved by -25 HU" in x for x in got["2"]["reasons"])


# --- DICOM studies ------------------------------------------------------------------------------------------------


def test_refusal_names_a_series_without_a_number_by_its_uid(tmp_path):
    case = generate_case(2, shape=(24, 96, 96))
    blend = 0.5 * (case.images["V"] + case.images["D"])  # a weak V or a strong D: really ambiguous
    uid = write_ct_series(str(tmp_path / "s"), blend, case.spacing, case.origin[::-1], new_uid(), 1,
                          attributes={"SeriesNumber": None})
    (study,), _ = index_studies(str(tmp_path))
    with pytest.raises(InputError) as e:
        identify_study(study)
    message = str(e.value)
    assert "\n" not in message and f"series {uid} " in message and f"--phase-map {uid}=PHASE" in message
    assert "series None" not in message and "image: liver" in message


@pytest.mark.slow  # 15 studies per header
@pytest.mark.parametrize("header", ["none", "all"])
def test_confusion_on_phantom_studies_with_oral_contrast_and_lipiodol(tmp_path, header):
    """Every subset of the four phases of a phantom with oral contrast, lipiodol and organ detail, without any
    helpful header or with honest ones: no wrong phase above the threshold; all four-phase studies right."""
    case = generate_case(5, shape=(24, 96, 96), lesion_free=False, organ_detail=True, oral_contrast=True,
                         lipiodol=True)
    series = {p: (n, HONEST_DESCRIPTIONS[p]) for p, (n, _) in SERIES.items()} if header == "all" else SERIES
    write_study(str(tmp_path / "pool"), case, times=header == "all", extras=False, series=series,
                tags=header == "all", oral=True)
    truth = {n: p for p, (n, _) in series.items()}
    calls = []
    for k, subset in enumerate(s for n in (4, 3, 2, 1) for s in itertools.combinations(PHASES, n)):
        subset_study(str(tmp_path / "pool"), str(tmp_path / f"s{k}"), [series[p][0] for p in subset])
        (study,), _ = index_studies(str(tmp_path / f"s{k}"))
        try:
            found = identify_study(study)
        except InputError as e:
            assert "--phase-map" in str(e) and "\n" not in str(e)
            calls += [(p, "refused", None) for p in subset]
            continue
        calls += [(truth[a["series_number"]], a["phase"], a["confidence"]) for a in found.record["acquisitions"]]
    wrong = [c for c in calls if c[1] not in ("refused", c[0])]
    assert not [c for c in wrong if c[2] >= MIN_CONFIDENCE], wrong
    assert all(c[1] == c[0] for c in calls[:4])  # the four-phase study
    refused = [c for c in calls if c[1] == "refused"]
    assert len(refused) <= (0 if header == "all" else 8), refused
