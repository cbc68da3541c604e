"""report.html: per case, the patient result and, per lesion, an axial slice through it with its mask outlined.

Each figure is a matplotlib PNG embedded as base64, so the report is one self-contained file. The slice is the
lesion's largest axial cross-section on the reference phase (liver window, W 400 / L 50 HU), cropped around the
lesion; the lesion's outline is drawn in its type's colour and other lesions in grey.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
from typing import List, Optional

import numpy as np

from nnunet_liver.labels import CT_WINDOW_HU as _WINDOW_HU
from nnunet_liver.utils.io import atomic_path

__all__ = ["write_report", "lesion_figure_png"]

_TYPE_COLOURS = {"HCC": "#e6194b", "ICC": "#f58231", "Meta": "#911eb4", "Hem": "#3cb44b", "Other": "#4363d8",
                 "Cyst": "#42d4f4"}
_MAX_LESIONS_SHOWN = 40


def _hex_rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a 2D bool mask (the mask minus its 4-neighbour erosion)."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    inner[[0, -1], :] = False
    inner[:, [0, -1]] = False
    return mask & ~inner


def lesion_figure_png(image: np.ndarray, instances: np.ndarray, lesion: dict, spacing, size_px: int = 192) -> bytes:
    """PNG bytes: the axial slice with the largest area of ``lesion`` (ids in ``instances``), outlined.

    Rendered with numpy and written by ``matplotlib.image.imsave`` (no figure machinery: a few ms per lesion).

    Parameters
    ----------
    image : (Z, Y, X) HU. instances : (Z, Y, X) lesion ids. lesion : the lesion's JSON entry. spacing : (z, y, x) mm.
    size_px : about the output's larger side in pixels (nearest-neighbour zoom, the in-plane aspect kept).
    """
    from matplotlib.image import imsave

    mask = instances == lesion["id"]
    areas = mask.reshape(mask.shape[0], -1).sum(1)
    z = int(np.argmax(areas))
    ys, xs = np.nonzero(mask[z])
    half = max(16, int(1.5 * max(np.ptp(ys) + 1, np.ptp(xs) + 1)))
    cy, cx = int(np.mean(ys)), int(np.mean(xs))
    y0, y1 = max(cy - half, 0), min(cy + half, image.shape[1])
    x0, x1 = max(cx - half, 0), min(cx + half, image.shape[2])
    grey = np.clip((image[z, y0:y1, x0:x1] - _WINDOW_HU[0]) / (_WINDOW_HU[1] - _WINDOW_HU[0]), 0, 1)
    rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)
    # zoom first (nearest), then draw one-pixel outlines so they stay thin
    zy = max(1, int(round(size_px / max(y1 - y0, 1) * min(1.0, spacing[1] / spacing[2]))))
    zx = max(1, int(round(size_px / max(x1 - x0, 1) * min(1.0, spacing[2] / spacing[1]))))
    rgb = rgb.repeat(zy, 0).repeat(zx, 1)
    this = mask[z, y0:y1, x0:x1].repeat(zy, 0).repeat(zx, 1)
    others = ((instances[z, y0:y1, x0:x1] > 0) & ~mask[z, y0:y1, x0:x1]).repeat(zy, 0).repeat(zx, 1)
    rgb[_outline(others)] = _hex_rgb("#bbbbbb")
    rgb[_outline(this)] = _hex_rgb(_TYPE_COLOURS.get(lesion["type"], "#ffff00"))
    buf = io.BytesIO()
    imsave(buf, rgb, format="png")
    return buf.getvalue()


def _fmt(v, digits=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _case_section(output_dir: str, case_id: str) -> str:
    import SimpleITK as sitk

    with open(os.path.join(output_dir, f"{case_id}.json"), encoding="utf-8") as f:
        rec = json.load(f)
    patient = rec["patient"]
    parts = [f"<section id='{html.escape(case_id)}'><h2>{html.escape(case_id)}</h2>",
             f"<p>Patient class: <b>{_fmt(patient['class'])}</b> (by factor: "
             + ", ".join(f"f={html.escape(k)}: {html.escape(str(v))}" for k, v in patient["class_by_factor"].items())
             + f"); malignant: <b>{_fmt(patient['malignant'])}</b>; phases: "
             f"{html.escape(' '.join(rec['phases_present']))}</p>",
             "<p>LiverMax: " + ", ".join(f"{html.escape(k)} {v:.3f}" for k, v in patient["livermax"].items())
             + "</p>"]
    if not rec["settings"]["reclassification"]["enabled"]:
        parts.append("<p class='note'>Reclassification skipped (no patch model).</p>")
    lesions = rec["lesions"]
    if not lesions:
        parts.append("<p>No lesion detected.</p></section>")
        return "\n".join(parts)
    ref_phase = rec["geometry"]["reference_phase"]
    image_path = rec.get("inputs", {}).get(ref_phase)
    image = instances = None
    try:
        image = sitk.GetArrayFromImage(sitk.ReadImage(image_path)).astype(np.float32)
        instances = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(output_dir, f"{case_id}_lesions.nii.gz")))
        if image.shape != instances.shape:
            image = None
    except Exception:  # noqa: BLE001 - the input moved since: the table is still useful
        image = None
    parts.append("<div class='grid'>")
    for les in lesions[:_MAX_LESIONS_SHOWN]:
        recls = les.get("reclassification") or {}
        caption = (f"#{les['id']} <b>{html.escape(les['type'])}</b> {les['volume_cm3']:.2f} cm3, "
                   f"{_fmt(les.get('diameter_mm'), 1)} mm<br>score {_fmt(les.get('score'))}, "
                   f"{html.escape(les['sensitivity'])}")
        if recls:
            caption += (f"<br>ReCls {_fmt(recls.get('score_cm3'))} cm3 ({html.escape(str(recls.get('type_before')))}"
                        f" &rarr; {html.escape(str(recls.get('type_after')))})"
                        + (f", {html.escape(recls['skipped'])}" if recls.get("skipped") else ""))
        img = ""
        if image is not None and (instances == les["id"]).any():
            png = lesion_figure_png(image, instances, les, rec["geometry"]["spacing_zyx_mm"])
            img = f"<img alt='lesion {les['id']}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        parts.append(f"<figure>{img}<figcaption>{caption}</figcaption></figure>")
    parts.append("</div>")
    if len(lesions) > _MAX_LESIONS_SHOWN:
        parts.append(f"<p>{len(lesions) - _MAX_LESIONS_SHOWN} more lesions in {html.escape(case_id)}.json</p>")
    parts.append("</section>")
    return "\n".join(parts)


def write_report(output_dir: str, case_ids: List[str], title: Optional[str] = None) -> str:
    """Write ``output_dir/report.html`` for the finished cases ``case_ids`` (their JSON and lesion maps)."""
    title = title or "nnunet-liver-detect report"
    body = [_case_section(output_dir, c) for c in case_ids]
    toc = " ".join(f"<a href='#{html.escape(c)}'>{html.escape(c)}</a>" for c in case_ids)
    doc = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} .grid{{display:flex;flex-wrap:wrap;gap:12px}}
figure{{margin:0;width:220px;font-size:12px}} img{{width:208px}} .note{{color:#a60}}
section{{border-top:1px solid #ccc;margin-top:1em}}</style></head>
<body><h1>{html.escape(title)}</h1><p>{len(case_ids)} case(s). {toc}</p>
{''.join(body)}
</body></html>
"""
    path = os.path.join(output_dir, "report.html")
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(doc)
    return path
