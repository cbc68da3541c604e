"""A DICOM study whose registration fails is a failed step (exit 1), not bad input (2); conversion skips it."""
import pytest

pytest.importorskip("pydicom")
import pydicom  # noqa: E402

from nnunet_liver.dicom.index import index_studies  # noqa: E402
from nnunet_liver.dicom.study import load_dicom_case  # noqa: E402
from nnunet_liver.registration import RegistrationError  # noqa: E402
from nnunet_liver.testing.dicom_study import SERIES, phantom, write_study  # noqa: E402
from nnunet_liver.utils.io import EXIT_FAILED, InputError, run_cli  # noqa: E402


@pytest.fixture
def shifted_study(tmp_path):
    """A study whose delayed phase lies 2.5 mm higher than the others in a frame of reference of its own (another
    grid whose scanner coordinates say nothing: registration alone puts it onto V)."""
    write_study(str(tmp_path / "s"), phantom(0, shape=(12, 64, 64)), times=True, extras=False)
    frame = pydicom.uid.generate_uid()
    for f in (tmp_path / "s" / f"series{SERIES['D'][0]}").iterdir():
        ds = pydicom.dcmread(f)
        ds.FrameOfReferenceUID = frame
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1],
                                   float(ds.ImagePositionPatient[2]) + 2.5]
        ds.save_as(f)
    (study,), _ = index_studies(str(tmp_path / "s"))
    return study


def test_registration_failure_is_a_failed_step(shifted_study, monkeypatch, capsys):
    import nnunet_liver.registration as registration

    def fails(*args, **kwargs):
        raise RuntimeError("Exception thrown in SimpleITK ...\nitk::ERROR: Too many samples map outside moving image "
                           "buffer")

    monkeypatch.setattr(registration, "register_to_reference", fails)
    with pytest.raises(RegistrationError, match=r"registration of D to V failed \(itk::ERROR: Too many samples") as e:
        load_dicom_case(shifted_study, ["NC", "A", "V", "D"], allow_missing=False)
    assert not isinstance(e.value, InputError)
    assert run_cli("nnunet-liver-x", lambda: load_dicom_case(shifted_study, ["NC", "A", "V", "D"], False)) \
        == EXIT_FAILED == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1

    from nnunet_liver.dataset_conversion.dicom import convert_dicom_study

    record = convert_dicom_study(("unused", ["NC", "A", "V", "D"], "s", (shifted_study, "rigid", {})))
    assert "registration of D to V failed" in record["error"]  # skipped, written nothing
