"""CASE.json has one builder: CaseRecord.to_dict, in the schema's key order, a copy the caller cannot edit back."""
import json

from nnunet_liver.inference import schema_path
from nnunet_liver.inference.record import SCHEMA_VERSION, CaseRecord


def _record(**kw):
    return CaseRecord(case="c1", phases_present=["NC", "A", "V"], phases_missing=["D"],
                      inputs={"NC": "/in/c1_0000.nii.gz", "A": "/in/c1_0001.nii.gz", "V": "/in/c1_0002.nii.gz",
                              "D": None},
                      geometry={"shape_zyx": [2, 3, 4], "registration": None}, model={"whole": {}},
                      settings={"factors": [1.0, 4.0]}, detections_by_factor={"1": {"before_reclassification": 0}},
                      lesions=[{"id": 1, "type": "HCC"}], patient={"class": "HCC"},
                      timing_s={"load_and_predict": 1.5, "total": 2.0}, **kw)


def test_keys_follow_the_schema():
    with open(schema_path(), encoding="utf-8") as f:
        schema_keys = list(json.load(f)["properties"])
    d = _record().to_dict()
    optional = ("characterization", "dicom", "output_errors")  # with --characterizer / a DICOM study / an output lost
    assert list(d) == [k for k in schema_keys if k not in optional]
    assert d["schema_version"] == SCHEMA_VERSION and d["phases_missing"] == ["D"]
    assert list(_record(dicom={"study_uid": "1.2"}).to_dict()) == [k for k in schema_keys if k not in optional[::2]]
    full = _record(dicom={"study_uid": "1.2"}).with_output_error("figures", "report figures not written (OSError)")
    full = full.with_characterization({1: {"hcc_probability": 0.8}}, {"at_risk": False})
    assert full.to_dict()["lesions"] == [{"id": 1, "type": "HCC", "hcc_probability": 0.8}]
    assert list(full.to_dict()) == schema_keys
    assert full.to_dict()["output_errors"] == {"figures": "report figures not written (OSError)"}


def test_dicom_outputs_go_into_the_dicom_record_of_a_new_record():
    rec = _record(dicom={"study_uid": "1.2", "reference_phase": "V"})
    assert rec.to_dict()["dicom"] == {"study_uid": "1.2", "reference_phase": "V", "outputs": None}
    done = rec.with_dicom_outputs({"seg": "c1_seg.dcm", "sr": "c1_sr.dcm"})
    assert done.to_dict()["dicom"]["outputs"] == {"seg": "c1_seg.dcm", "sr": "c1_sr.dcm"}
    assert rec.to_dict()["dicom"]["outputs"] is None and rec.dicom == {"study_uid": "1.2", "reference_phase": "V"}
    assert "dicom" not in _record().with_dicom_outputs({"seg": None}).to_dict()  # a NIfTI case has no DICOM record


def test_to_dict_is_a_copy():
    rec = _record()
    d = rec.to_dict()
    d["lesions"].append({"id": 2})
    d["patient"]["class"] = "Meta"
    d["timing_s"]["total"] = 0
    assert rec.to_dict() == _record().to_dict()
