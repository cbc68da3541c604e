"""nnU-Net's own planner accepts a converted dataset (MSD fixture + a multi-phase case, merged)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_convert import _phantom_case_folder, make_msd  # noqa: E402
from test_phantom_nnunet import nnunet_env, run_planner  # noqa: E402

from nnunet_liver.dataset_conversion.cli import main as convert_main  # noqa: E402


@pytest.mark.slow
def test_plan_and_preprocess_accepts_converted_dataset(tmp_path):
    env = nnunet_env(tmp_path)
    task = make_msd(tmp_path, n=2, shape=(24, 96, 96))
    for image in (task / "imagesTr").iterdir():  # give the fixture the phantom's spacing
        import SimpleITK as sitk

        for folder in ("imagesTr", "labelsTr"):
            path = task / folder / image.name
            im = sitk.ReadImage(str(path))
            im.SetSpacing((3.0, 3.0, 5.0))
            sitk.WriteImage(im, str(path))
    _phantom_case_folder(tmp_path / "mp" / "pat01", phases=("A", "V"))
    raw = str(tmp_path / "raw")
    assert convert_main(["msd", "-i", str(task), "-d", "712", "-n", "Converted", "-o", raw, "--phases", "NC,A,V,D",
                         "--tumor-type", "HCC"]) == 0
    assert convert_main(["multiphase", "-i", str(tmp_path / "mp"), "-d", "712", "-n", "Converted", "-o", raw,
                         "--append"]) == 0
    run_planner(env, "712")
    assert (tmp_path / "preprocessed" / "Dataset712_Converted" / "nnUNetPlans.json").is_file()
