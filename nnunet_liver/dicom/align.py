"""One phase of a DICOM study put on the reference phase's grid: scanner coordinates first, registration a refinement.

Phases of one frame of reference share the scanner's patient coordinates: resampling by them (the identity transform)
is right unless the patient moved or breathed differently between the acquisitions. A rigid registration (SimpleITK,
Mattes mutual information, :func:`nnunet_liver.registration.register_to_reference`) refines that alignment and is kept
only when it improves on the mutual information of the scanner alignment (a lower Mattes metric); both figures are
recorded. Phases of another or no
frame of reference have coordinates that need not agree, and the registration result (from the better of the scanner's
and the centred start) is used.
"""
from __future__ import annotations


__all__ = ["REGISTRATION_GRID_MM", "align_phase"]

#: the registration refinement runs on both phases averaged down to voxels of about this size in-plane (mm)
REGISTRATION_GRID_MM = 2.0


def _shrunk(image):
    """``image`` averaged down (BinShrink) to voxels of about REGISTRATION_GRID_MM in-plane; z kept."""
    import SimpleITK as sitk

    factors = [max(1, int(round(REGISTRATION_GRID_MM / s))) for s in image.GetSpacing()[:2]] + [1]
    return image if factors == [1, 1, 1] else sitk.BinShrink(image, factors)


def _transform(report: dict, kind: str):
    """The SimpleITK transform of a registration report (identity when it has no parameters)."""
    import SimpleITK as sitk

    if not report.get("parameters"):
        return sitk.Transform(3, sitk.sitkIdentity)
    t = sitk.Euler3DTransform() if kind == "rigid" else sitk.AffineTransform(3)
    t.SetFixedParameters(report["fixed_parameters"])
    t.SetParameters(report["parameters"])
    return t


def align_phase(image, ref, same_frame: bool, transform: str, what: str):
    """``image`` on ``ref``'s grid and its alignment record (None when the grids already agree).

    Same frame of reference: the scanner's coordinates first (resampled with the identity transform), then a rigid
    (or ``transform``) registration refinement, kept only when it lowers the Mattes mutual information metric of the
    scanner alignment. Another or no frame of reference: the coordinates of the two phases are not comparable, so the
    registration result is used (from the better of the scanner's and the centred start). The registration runs on
    both images averaged down to about :data:`REGISTRATION_GRID_MM` in-plane (a rigid body of the abdomen is found
    there as well, on a small fraction of the voxels of 0.7 mm slices), and its transform then resamples the
    full-resolution phase.
    """
    import SimpleITK as sitk

    from nnunet_liver.case import registration_record, same_geometry
    from nnunet_liver.registration import RegistrationError, register_to_reference, resample_to

    if same_geometry(image, ref) is None:
        return sitk.GetArrayFromImage(image), None
    try:
        _, report = register_to_reference(_shrunk(image), _shrunk(ref), transform=transform)
    except RuntimeError as e:
        if not same_frame:
            raise RegistrationError(f"{what} failed ({(str(e).strip().splitlines() or [''])[-1][:160]})") from None
        report = {"improved": False, "stop_condition": f"registration failed: {e}"}
    record = registration_record(report)
    record["frame_of_reference"] = "shared" if same_frame else "different or absent"
    record["registration_grid_mm"] = [round(float(v), 3) for v in _shrunk(ref).GetSpacing()]
    if same_frame and not report.get("improved"):
        record["alignment"] = "scanner coordinates (the registration did not improve the mutual information)"
        return sitk.GetArrayFromImage(resample_to(image, ref)), record
    record["alignment"] = ("scanner coordinates refined by registration" if same_frame
                           else "registration (no shared frame of reference)")
    return sitk.GetArrayFromImage(resample_to(image, ref, _transform(report, transform))), record
