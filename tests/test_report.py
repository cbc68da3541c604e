"""report.py: lesion panels per phase, the overview, figures saved at detection time, a report built without volumes."""
import io
import json
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_liver.inference.report import (FIGURES_DIR, lesion_panels, overview_png, save_case_figures,
                                           write_report)


def _decode(png: bytes) -> np.ndarray:
    from matplotlib.image import imread

    return (imread(io.BytesIO(png), format="png")[..., :3] * 255).round().astype(np.uint8)


def painted():
    """(8, 40, 40) phases: liver 60 HU; lesion 1 (slices 2-5) bright on A only; lesion 2 (slice 6) dark everywhere."""
    base = np.full((8, 40, 40), -1000, np.float32)
    base[:, 5:35, 5:35] = 60
    images = {p: base.copy() for p in ("NC", "A", "V", "D")}
    images["A"][2:6, 10:16, 10:16] = 200
    inst = np.zeros(base.shape, np.uint16)
    inst[2:6, 10:16, 10:16] = 1
    inst[3, 12:14, 12:14] = 1
    inst[6, 25:30, 25:30] = 2
    for im in images.values():
        im[6, 25:30, 25:30] = 0
    return images, inst


def test_lesion_panels_one_per_phase_with_outline():
    images, inst = painted()
    panels = lesion_panels(images, inst, 1, "HCC", (5.0, 1.0, 1.0), size_px=120)
    assert list(panels) == ["NC", "A", "V", "D"]
    red = np.array([0xE6, 0x19, 0x4B])
    for phase, png in panels.items():
        rgb = _decode(png)
        outline = np.all(rgb == red, axis=2)
        assert outline.any(), phase
        inside = rgb[~outline & (rgb[..., 0] == rgb[..., 1])]
        assert inside.size  # grey CT pixels around the outline
    # the lesion is brighter on A (200 HU) than on NC (60 HU, the liver's grey)
    a, nc = _decode(panels["A"]), _decode(panels["NC"])
    assert a.reshape(-1, 3).max(0)[1] > nc.reshape(-1, 3).max(0)[1]


def test_overview_numbers_every_lesion():
    images, inst = painted()
    rgb = _decode(overview_png(images["V"], inst, None, (5.0, 1.0, 1.0), {1: "HCC", 2: "Cyst"}, size_px=200))
    assert np.all(rgb == [0xE6, 0x19, 0x4B], axis=2).any() and np.all(rgb == [0x42, 0xD4, 0xF4], axis=2).any()


def test_report_reads_figures_not_volumes(tmp_path, monkeypatch):
    images, inst = painted()
    data = np.stack([images[p] for p in ("NC", "A", "V", "D")])
    case = types.SimpleNamespace(case_id="c1", images_by_phase=lambda: images, reference_channel=2, data=data,
                                 inputs={"NC": 0, "A": 0, "V": 0, "D": 0}, spacing=(5.0, 1.0, 1.0))
    record = {"case": "c1", "phases_present": ["NC", "A", "V", "D"], "geometry": {"reference_phase": "V"},
              "settings": {"reclassification": {"enabled": False}},
              "patient": {"class": "HCC", "class_by_factor": {"1": "HCC"}, "malignant": True, "livermax": {"HCC": 1.0}},
              "lesions": [{"id": 1, "type": "HCC", "volume_cm3": 0.7, "diameter_mm": 8.5, "score": 0.9,
                           "sensitivity": "same", "features": {"APHE": 140.0, "NPW": 0.0, "EC": None}},
                          {"id": 2, "type": "Cyst", "volume_cm3": 0.1, "diameter_mm": 7.1, "score": 0.4,
                           "sensitivity": "diff", "features": None}]}
    result = types.SimpleNamespace(case=case, record=record, instance_map=inst, label_maps={})
    folder = save_case_figures(result, str(tmp_path))
    assert sorted(p.name for p in (tmp_path / FIGURES_DIR / "c1").iterdir()) == sorted(
        ["overview.png"] + [f"lesion{i}_{p}.png" for i in (1, 2) for p in ("NC", "A", "V", "D")])
    (tmp_path / "c1.json").write_text(json.dumps(record))

    def no_volumes(*a, **k):
        raise AssertionError("the report must not read a volume")

    monkeypatch.setattr(sitk, "ReadImage", no_volumes)
    html = Path(write_report(str(tmp_path), ["c1"])).read_text(encoding="utf-8")
    assert html.count("<img") == 1 + 2 * 4 and "APHE" in html and ">140<" in html and folder.endswith("c1")
    assert html.index("#1 HCC") < html.index("#2 Cyst")


def test_report_without_figures_still_lists_lesions(tmp_path):
    record = {"case": "c2", "phases_present": ["V"], "geometry": {"reference_phase": "V"},
              "settings": {"reclassification": {"enabled": True}},
              "patient": {"class": "normal", "class_by_factor": {"1": "normal"}, "malignant": False, "livermax": {}},
              "lesions": []}
    (tmp_path / "c2.json").write_text(json.dumps(record))
    html = Path(write_report(str(tmp_path), ["c2"])).read_text(encoding="utf-8")
    assert "No lesion detected" in html and "<img" not in html
    with pytest.raises(FileNotFoundError):
        write_report(str(tmp_path), ["missing"])


def test_lesion_head_table_only_with_the_heads_probabilities(tmp_path):
    from nnunet_liver.labels import LESION_NAMES

    probs = {"HCC": 0.7, "ICC": 0.1, "Meta": 0.05, "Hem": 0.05, "Other": 0.05, "Cyst": 0.05}
    lesion = {"id": 1, "label": 1, "type": "HCC", "volume_cm3": 2.5, "match": "same",
              "type_probabilities": probs, "reclassification": {"type_vote": "Meta"}}
    record = {"case": "h", "phases_present": ["V"], "geometry": {"reference_phase": "V"},
              "settings": {"reclassification": {"enabled": True}},
              "patient": {"class": "HCC", "class_by_factor": {"1": "HCC"}, "malignant": True, "livermax": {}},
              "lesions": [lesion]}
    (tmp_path / "h.json").write_text(json.dumps(record))
    page = Path(write_report(str(tmp_path), ["h"])).read_text(encoding="utf-8")
    assert "Lesion head" in page
    table = page[page.index("Lesion head"):]
    assert all(f"<th>{n}</th>" in table for n in LESION_NAMES)
    assert "<td>1</td><td>HCC</td><td>Meta</td><td>0.700</td><td>0.100</td>" in table
    del lesion["type_probabilities"]  # a model without the head: no table
    (tmp_path / "h.json").write_text(json.dumps(record))
    assert "Lesion head" not in Path(write_report(str(tmp_path), ["h"])).read_text(encoding="utf-8")


def test_figures_and_text_use_the_given_ct_window(tmp_path):
    """The panels and the overview map HU to grey with the window they are given (the model's, from its plans);
    the report names it."""
    images, inst = painted()
    liver = {}
    for window in ((-150.0, 250.0), (0.0, 100.0)):
        rgb = _decode(lesion_panels(images, inst, 1, "HCC", (5.0, 1.0, 1.0), size_px=120, window=window)["V"])
        over = _decode(overview_png(images["V"], inst, None, (5.0, 1.0, 1.0), {1: "HCC"}, size_px=200,
                                    window=window))
        grey = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])
        liver[window] = (np.bincount(rgb[grey][:, 0]).argmax(), np.bincount(over[np.all(over == over[..., :1],
                                                                                         axis=2)][:, 0]).argmax())
    assert liver[(-150.0, 250.0)] == (133, 133)  # 60 HU: (60 + 150) / 400 of the grey range
    assert liver[(0.0, 100.0)] == (153, 153)  # 60 / 100
    record = {"case": "c3", "phases_present": ["V"], "geometry": {"reference_phase": "V"},
              "settings": {"reclassification": {"enabled": True}},
              "patient": {"class": "HCC", "class_by_factor": {"1": "HCC"}, "malignant": True, "livermax": {}},
              "lesions": [{"id": 1, "type": "HCC", "volume_cm3": 0.7, "diameter_mm": 8.5, "score": 0.9,
                           "sensitivity": "same", "features": None}]}
    (tmp_path / "c3.json").write_text(json.dumps(record))
    html = Path(write_report(str(tmp_path), ["c3"], window=(0.0, 100.0))).read_text(encoding="utf-8")
    assert "window 0 to 100 HU" in html
