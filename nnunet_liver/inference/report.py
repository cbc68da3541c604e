"""report.html: per case the patient result, an overview with every lesion numbered, each lesion in every present
phase side by side, and the lesion table.

The figures are rendered when the case is detected, while its images are in memory (:func:`save_case_figures`,
called by the runner), and stored as small PNGs in ``OUT/figures/CASE/``; :func:`write_report` only reads those and
the JSON, so building the report never loads a volume again. Each lesion is shown at its centre slice (the axial
slice with its largest cross-section) in every present phase (NC, A, V, D, on the reference grid), cropped around it,
in the model's CT window (``LoadedModel.ct_window``, from its plans), with its outline in its type's colour
and other lesions in grey: the enhancement pattern its type rests on is visible at a glance. The overview is the
reference phase's axial slice with the largest total lesion area, cropped to the liver region the model found, with
the outlines of all lesions projected along z onto it and their numbers. The report is one self-contained file
(PNGs embedded as base64).
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from nnunet_liver.characterize.hook import report_html as characterization_html
from nnunet_liver.labels import CT_WINDOW_HU, LIVER_REGION_IDS, PHASES
from nnunet_liver.utils.io import atomic_dir, atomic_path

__all__ = ["write_report", "save_case_figures", "lesion_panels", "overview_png", "FIGURES_DIR"]

FIGURES_DIR = "figures"
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


def _grey_rgb(image2d: np.ndarray, window: Tuple[float, float]) -> np.ndarray:
    lo, hi = window
    grey = np.clip((np.asarray(image2d, dtype=np.float32) - lo) / (hi - lo), 0, 1)
    return np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)


def _zoom_factors(shape2d, spacing_yx, size_px: int):
    """Integer nearest-neighbour zooms (y, x) giving about ``size_px`` pixels on the larger side, aspect kept."""
    mm = (shape2d[0] * spacing_yx[0], shape2d[1] * spacing_yx[1])
    scale = size_px / max(mm)
    return max(1, int(round(scale * spacing_yx[0]))), max(1, int(round(scale * spacing_yx[1])))


def _png(rgb: np.ndarray) -> bytes:
    from matplotlib.image import imsave

    buf = io.BytesIO()
    imsave(buf, rgb, format="png")
    return buf.getvalue()


def lesion_panels(images: Dict[str, np.ndarray], instances: np.ndarray, lesion_id: int, lesion_type: str, spacing,
                  size_px: int = 160, window: Tuple[float, float] = CT_WINDOW_HU) -> Dict[str, bytes]:
    """{phase: PNG bytes} of lesion ``lesion_id`` at its centre slice, one per phase of ``images``.

    Parameters
    ----------
    images : {phase: (Z, Y, X) HU} on the grid of ``instances`` (Z, Y, X lesion ids); spacing : (z, y, x) mm.
    """
    mask = instances == lesion_id
    areas = mask.reshape(mask.shape[0], -1).sum(1)
    z = int(np.argmax(areas))
    ys, xs = np.nonzero(mask[z])
    half_mm = max(20.0, 1.5 * (np.ptp(ys) + 1) * spacing[1], 1.5 * (np.ptp(xs) + 1) * spacing[2])  # square, >= 40 mm
    half_y, half_x = int(np.ceil(half_mm / spacing[1])), int(np.ceil(half_mm / spacing[2]))
    cy, cx = int(np.mean(ys)), int(np.mean(xs))
    y0, y1 = max(cy - half_y, 0), min(cy + half_y, mask.shape[1])
    x0, x1 = max(cx - half_x, 0), min(cx + half_x, mask.shape[2])
    zy, zx = _zoom_factors((y1 - y0, x1 - x0), spacing[1:], size_px)
    this = mask[z, y0:y1, x0:x1].repeat(zy, 0).repeat(zx, 1)
    others = ((instances[z, y0:y1, x0:x1] > 0) & ~mask[z, y0:y1, x0:x1]).repeat(zy, 0).repeat(zx, 1)
    out = {}
    for phase, image in images.items():
        rgb = _grey_rgb(image[z, y0:y1, x0:x1], window).repeat(zy, 0).repeat(zx, 1)  # zoom first: 1-pixel outlines
        rgb[_outline(others)] = _hex_rgb("#bbbbbb")
        rgb[_outline(this)] = _hex_rgb(_TYPE_COLOURS.get(lesion_type, "#ffff00"))
        out[phase] = _png(rgb)
    return out


def overview_png(image: np.ndarray, instances: np.ndarray, liver: Optional[np.ndarray], spacing,
                 types: Optional[Dict[int, str]] = None, size_px: int = 480,
                 window: Tuple[float, float] = CT_WINDOW_HU) -> bytes:
    """PNG of the axial slice of ``image`` with the largest lesion area, cropped to the liver region, with every
    lesion's outline projected along z and its number (lesion ids in ``instances``, (Z, Y, X)), in its type's colour
    (``types``: lesion id -> type name)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    lesion = instances > 0
    z = int(np.argmax(lesion.reshape(lesion.shape[0], -1).sum(1)))
    region = liver if liver is not None and liver.any() else (image > -500)
    region2d = region.any(0) | lesion.any(0)
    ys, xs = np.nonzero(region2d) if region2d.any() else (np.arange(image.shape[1]), np.arange(image.shape[2]))
    pad = int(np.ceil(15.0 / spacing[1]))
    y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, image.shape[1])
    x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, image.shape[2])
    zy, zx = _zoom_factors((y1 - y0, x1 - x0), spacing[1:], size_px)
    rgb = _grey_rgb(image[z, y0:y1, x0:x1], window).repeat(zy, 0).repeat(zx, 1)
    projected = instances[:, y0:y1, x0:x1].max(0)
    labels = []
    for lesion_id in np.unique(projected[projected > 0]):
        m = (projected == lesion_id).repeat(zy, 0).repeat(zx, 1)
        colour = _TYPE_COLOURS.get((types or {}).get(int(lesion_id), ""), "#ffff00")
        rgb[_outline(m)] = _hex_rgb(colour)
        yy, xx = np.nonzero(m)
        labels.append((int(lesion_id), float(xx.max()) + 2, float(yy.min()), colour))
    h, w = rgb.shape[:2]
    fig = Figure(figsize=(w / 100, h / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(rgb, interpolation="nearest")
    from matplotlib import patheffects

    outline = [patheffects.withStroke(linewidth=3.5, foreground="black")]
    for lesion_id, x, y, colour in labels:  # white numbers outlined in black: legible on any grey and any outline
        ax.text(min(x, w - 8 * len(str(lesion_id)) - 6), min(max(y, 2), h - 22), str(lesion_id), color="white",
                fontsize=15, fontweight="bold", va="top", path_effects=outline)
    ax.set_axis_off()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def save_case_figures(result, output_dir: str, window: Tuple[float, float] = CT_WINDOW_HU) -> str:
    """Render a detected case's figures into ``output_dir/figures/CASE/`` (overview.png, lesionN_PHASE.png) in the
    CT ``window`` (HU; the model's, ``LoadedModel.ct_window``).

    ``result`` is a :class:`~nnunet_liver.inference.detector.CaseResult`; only its in-memory arrays are used.
    """
    case = result.case
    folder = os.path.join(output_dir, FIGURES_DIR, case.case_id)
    images = case.images_by_phase()
    images = {p: images[p] for p in PHASES if p in images} | {p: v for p, v in images.items() if p not in PHASES}
    lesions = result.record.get("lesions", [])[:_MAX_LESIONS_SHOWN]
    with atomic_dir(folder, overwrite=True) as tmp:
        if not lesions:
            return folder
        liver = None
        if result.label_maps:
            labels = result.label_maps[min(result.label_maps)]
            labels = labels.cpu().numpy() if hasattr(labels, "cpu") else np.asarray(labels)  # torch on any device
            liver = np.isin(labels, LIVER_REGION_IDS)
        ref_phase = list(case.inputs)[case.reference_channel]
        with open(os.path.join(tmp, "overview.png"), "wb") as f:
            f.write(overview_png(images.get(ref_phase, next(iter(images.values()))), result.instance_map, liver,
                                 case.spacing, {les["id"]: les["type"] for les in result.record["lesions"]},
                                 window=window))
        for les in lesions:
            if not (result.instance_map == les["id"]).any():
                continue
            for phase, png in lesion_panels(images, result.instance_map, les["id"], les["type"],
                                            case.spacing, window=window).items():
                with open(os.path.join(tmp, f"lesion{les['id']}_{phase}.png"), "wb") as f:
                    f.write(png)
    return folder


def _fmt(v, digits=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _img(path: str, alt: str, css: str = "") -> str:
    if not os.path.isfile(path):
        return "<span class='note'>(no figure)</span>"
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return f"<img class='{css}' alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def _dicom_lines(rec: dict) -> List[str]:
    dicom = rec.get("dicom")
    if not dicom:
        return []
    rows = "".join(f"<tr><td>{html.escape(a['phase'])}</td><td>{_fmt(a.get('series_number'))}</td>"
                   f"<td>{html.escape(a.get('description', ''))}</td><td>{_fmt(a.get('confidence'))}</td>"
                   f"<td>{_fmt(a.get('liver_hu'), 0)} / {_fmt(a.get('aorta_hu'), 0)}</td>"
                   f"<td class='uid'>{html.escape(a['series_uid'])}</td></tr>" for a in dicom.get("acquisitions", []))
    out = dicom.get("outputs") or {}
    written = ", ".join(out[k] for k in ("seg", "sr") if out.get(k)) or "nothing"
    notes = [f"<p class='note'>{html.escape(out['not_written'])}</p>"] if out.get("not_written") else []
    partial = sum(len(e.get("files", [])) for e in dicom.get("series_left_out", []))
    unreadable = len(dicom.get("unreadable_files", []))
    if partial or unreadable:
        notes.append(f"<p class='note'>{partial} image(s) left out of the series used, {unreadable} file(s) not "
                     f"read as DICOM; CASE.json lists each with its reason.</p>")
    return [f"<p>DICOM study <span class='uid'>{html.escape(dicom.get('study_uid', ''))}</span>; written back: "
            f"{html.escape(written)}</p>"] + notes + [
            "<table><tr><th>phase</th><th>series</th><th>description</th><th>confidence</th>"
            f"<th>liver / aorta HU</th><th>series UID</th></tr>{rows}</table>"]


def _lesion_table(lesions: List[dict]) -> str:
    head = ("<tr><th>#</th><th>type</th><th>volume (cm3)</th><th>diameter (mm)</th><th>score</th>"
            "<th>sensitivity</th><th>APHE (HU)</th><th>NPW (HU)</th><th>EC (HU&sup2;)</th><th>reclassification</th>"
            "</tr>")
    rows = []
    for les in lesions:
        feats = les.get("features") or {}
        recls = les.get("reclassification") or {}
        recls_text = "-"
        if recls:
            recls_text = (f"{_fmt(recls.get('type_before'))} &rarr; {_fmt(recls.get('type_after'))}"
                          + (f" ({_fmt(recls.get('skipped'))})" if recls.get("skipped") else ""))
        colour = _TYPE_COLOURS.get(les["type"], "#000")
        rows.append(f"<tr><td>{les['id']}</td><td style='color:{colour}'><b>{html.escape(les['type'])}</b></td>"
                    f"<td>{_fmt(les.get('volume_cm3'))}</td><td>{_fmt(les.get('diameter_mm'), 1)}</td>"
                    f"<td>{_fmt(les.get('score'))}</td><td>{_fmt(les.get('sensitivity'))}</td>"
                    f"<td>{_fmt(feats.get('APHE'), 0)}</td><td>{_fmt(feats.get('NPW'), 0)}</td>"
                    f"<td>{_fmt(feats.get('EC'), 0)}</td><td>{recls_text}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _lesion_head_table(lesions: List[dict]) -> str:
    """The lesion head's per-type probabilities (UNet-patch with LIDIA's lesion head only; '' otherwise)."""
    if not any("type_probabilities" in les for les in lesions):
        return ""
    from nnunet_liver.labels import LESION_NAMES

    head = ("<tr><th>#</th><th>type</th><th>voxel vote</th>" + "".join(f"<th>{n}</th>" for n in LESION_NAMES)
            + "</tr>")
    rows = []
    for les in lesions:
        probs = les.get("type_probabilities") or {}
        vote = (les.get("reclassification") or {}).get("type_vote")
        cells = "".join(f"<td>{_fmt(probs.get(n), 3)}</td>" for n in LESION_NAMES)
        rows.append(f"<tr><td>{les['id']}</td><td>{html.escape(les['type'])}</td><td>{_fmt(vote)}</td>{cells}</tr>")
    return ("<p>Lesion head (LIDIA's lesion-level classifier on UNet-patch): per-type probabilities, averaged over "
            "the reclassification patches and the folds; a reclassified lesion's type is the most probable one, the "
            "voxel vote of UNet-patch's segmentation beside it.</p>" + f"<table>{head}{''.join(rows)}</table>")


def _case_section(output_dir: str, case_id: str, window: Tuple[float, float]) -> str:
    with open(os.path.join(output_dir, f"{case_id}.json"), encoding="utf-8") as f:
        rec = json.load(f)
    patient = rec["patient"]
    figures = os.path.join(output_dir, FIGURES_DIR, case_id)
    parts = [f"<section id='{html.escape(case_id)}'><h2>{html.escape(case_id)}</h2>",
             f"<p>Patient class: <b>{_fmt(patient['class'])}</b> (by factor: "
             + ", ".join(f"f={html.escape(k)}: {html.escape(str(v))}" for k, v in patient["class_by_factor"].items())
             + f"); malignant: <b>{_fmt(patient['malignant'])}</b>; phases: "
             f"{html.escape(' '.join(rec['phases_present']))} "
             f"(reference {html.escape(rec['geometry']['reference_phase'])})</p>",
             "<p>LiverMax: " + ", ".join(f"{html.escape(k)} {v:.3f}" for k, v in patient["livermax"].items())
             + "</p>"] + _dicom_lines(rec)
    if not rec["settings"]["reclassification"]["enabled"]:
        parts.append("<p class='note'>Reclassification skipped (no patch model).</p>")
    lesions = rec["lesions"]
    if not lesions:
        parts.append("<p>No lesion detected.</p></section>")
        return "\n".join(parts)
    parts.append("<div class='overview'>" + _img(os.path.join(figures, "overview.png"), f"{case_id} overview",
                                                 "overview")
                 + "<p>Overview: all lesions outlined (projected along z) and numbered.</p></div>")
    parts.append(_lesion_table(lesions))
    parts.append(_lesion_head_table(lesions))
    parts.append(characterization_html(rec))  # the second stage's probabilities and LI-RADS ('' without it)
    phases = [p for p in PHASES if p in rec["phases_present"]]
    lo, hi = window
    parts.append(f"<p>Each lesion at its centre slice, every present phase, window {lo:g} to {hi:g} HU.</p>")
    for les in lesions[:_MAX_LESIONS_SHOWN]:
        files = {p: os.path.join(figures, f"lesion{les['id']}_{p}.png") for p in phases}
        cells = "".join(f"<figure>{_img(files[p], p)}<figcaption>{p}</figcaption></figure>" for p in phases)
        parts.append(f"<div class='lesion'><h3>#{les['id']} {html.escape(les['type'])} "
                     f"({_fmt(les.get('volume_cm3'))} cm3, {_fmt(les.get('diameter_mm'), 1)} mm, "
                     f"{_fmt(les.get('sensitivity'))})</h3><div class='row'>{cells}</div></div>")
    if len(lesions) > _MAX_LESIONS_SHOWN:
        parts.append(f"<p>{len(lesions) - _MAX_LESIONS_SHOWN} more lesions in {html.escape(case_id)}.json</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _not_done_section(output_dir: str) -> str:
    """The failed and pending cases of ``summary.csv`` (written before the report) with their one-line errors."""
    import csv

    path = os.path.join(output_dir, "summary.csv")
    if not os.path.isfile(path):
        return ""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("status") in ("failed", "pending")]
    if not rows:
        return ""
    items = "".join(f"<tr><td>{html.escape(r['case'])}</td><td>{html.escape(r['status'])}</td>"
                    f"<td class='err'>{html.escape(r.get('error') or '')}</td></tr>" for r in rows)
    failed = sum(r["status"] == "failed" for r in rows)
    return (f"<section id='not-done'><h2>Cases without a result: {failed} failed, {len(rows) - failed} pending</h2>"
            f"<table><tr><th>case</th><th>status</th><th>error</th></tr>{items}</table></section>")


def write_report(output_dir: str, case_ids: List[str], title: Optional[str] = None,
                 window: Tuple[float, float] = CT_WINDOW_HU) -> str:
    """Write ``output_dir/report.html`` for the finished cases ``case_ids`` (their JSON and saved figures, drawn in
    the CT ``window``, HU), and the failed and pending cases that ``summary.csv`` lists, with their errors."""
    title = title or "nnunet-liver-detect report"
    body = [_case_section(output_dir, c, window) for c in case_ids]
    not_done = _not_done_section(output_dir)
    toc = " ".join(f"<a href='#{html.escape(c)}'>{html.escape(c)}</a>" for c in case_ids)
    if not_done:
        toc += " <a href='#not-done'>cases without a result</a>"
    doc = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} .row{{display:flex;gap:6px}}
figure{{margin:0;font-size:12px;text-align:center}} .row img{{width:160px;image-rendering:pixelated}}
img.overview{{max-width:480px}} .note{{color:#a60}} .uid{{font-family:monospace;font-size:11px}}
table{{border-collapse:collapse;margin:.5em 0}} td,th{{border:1px solid #ccc;padding:2px 6px;font-size:13px}}
section{{border-top:1px solid #ccc;margin-top:1em}} h3{{font-size:14px;margin:.8em 0 .3em}}
td.err{{color:#a00;font-family:monospace;font-size:12px}}</style></head>
<body><h1>{html.escape(title)}</h1><p>{len(case_ids)} case(s) done. {toc}</p>
{not_done}{''.join(body)}
</body></html>
"""
    path = os.path.join(output_dir, "report.html")
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(doc)
    return path
