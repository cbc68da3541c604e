"""Phantom studies written as DICOM with a DICOM SEG of their truth (every class by our names) -> ``nnunet-liver-convert
dicom`` -> ``nnunet-liver-plan --verify_dataset_integrity`` -> ``nnUNetv2_train ... -tr LiverIFMTrainer_tiny``, as the
NIfTI phantom dataset trains (tests/conftest.py)."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("highdicom")

from nnunet_liver import labels as L  # noqa: E402
from nnunet_liver.dataset_conversion.dicom import convert_dicom  # noqa: E402
from nnunet_liver.testing.dicom_annotations import sorted_headers, write_seg  # noqa: E402
from nnunet_liver.testing.dicom_study import SERIES, phantom, write_study  # noqa: E402

DATASET_ID, DATASET_NAME = 533, "Dataset533_DicomSeg"


@pytest.mark.slow
def test_dicom_seg_dataset_trains_with_the_tiny_ifm_trainer(nnunet_dirs, train_dataset, tmp_path):
    studies = tmp_path / "studies"
    truths = {}
    for seed in range(5):
        case = phantom(seed, shape=(16, 64, 64))
        folder = studies / f"case{seed}"
        write_study(str(folder), case, extras=False, study_uid=None)
        headers = sorted_headers(str(folder / f"series{SERIES['V'][0]}"))
        segments = [(L.name_of(int(v)), case.label == v, None) for v in np.unique(case.label) if v]
        write_seg(str(folder / "seg" / "seg.dcm"), headers, segments)
        truths[f"case{seed}"] = case.label
    out = convert_dicom([str(studies)], DATASET_ID, "DicomSeg", output=str(nnunet_dirs.raw))
    record = json.loads((nnunet_dirs.raw / DATASET_NAME / "conversion.json").read_text())
    assert all(r["split"] == "train" and r["reference_phase"] == "V" for r in record["cases"].values())
    for name, truth in truths.items():
        got = sitk.GetArrayFromImage(sitk.ReadImage(f"{out}/labelsTr/{name}.nii.gz"))
        np.testing.assert_array_equal(got, truth)
    model = train_dataset(DATASET_ID, DATASET_NAME, "LiverIFMTrainer_tiny")
    assert (model.model_folder / "fold_0" / "checkpoint_final.pth").is_file()
    dataset = json.loads((nnunet_dirs.raw / DATASET_NAME / "dataset.json").read_text())
    assert dataset["numTraining"] == 5 and dataset["channel_names"] == {"0": "NC", "1": "A", "2": "V", "3": "D"}
