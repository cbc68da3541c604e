"""The docs a user reads: a one-page model card, papers cited by their full titles, nothing about the tracker."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: how a paper is mentioned -> its full title (the papers' own spelling)
PAPERS = {
    ("Wang et al",): "A Cascaded Approach for ultraly High Performance Lesion Detection and False Positive Removal in "
                     "Liver CT Scans",
    ("Huang et al", "LIDIA"): "LIDIA: Precise Liver Tumor Diagnosis on Multi-Phase Contrast-Enhanced CT via Iterative "
                              "Fusion and Asymmetric Contrastive Learning",
    ("Sarfati",): "Guiding the classification of hepatocellular carcinoma on 3D CT-scans using deep and handcrafted "
                  "radiological features",
    ("Nolte",): "Detecting HCC in NAFLD patients using deep learning based radiomics",
}


def _docs():
    """{name: text} of every markdown page and every module docstring of the package, scripts and benchmarks."""
    out = {}
    for path in sorted(ROOT.glob("*.md")) + sorted(p for d in ("nnunet_liver", "dataset_conversion", "benchmarks")
                                                   for p in (ROOT / d).rglob("*.md")):
        out[path.relative_to(ROOT).as_posix()] = path.read_text(encoding="utf-8")
    for d in ("nnunet_liver", "dataset_conversion", "scripts", "benchmarks"):
        for path in sorted((ROOT / d).rglob("*.py")):
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")), clean=False)
            if doc:
                out[path.relative_to(ROOT).as_posix()] = doc
    return out


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_model_card_is_one_page():
    card = (ROOT / "nnunet_liver" / "demo_models" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert len(card.splitlines()) <= 150
    headings = [l for l in card.splitlines() if l.startswith("## ")]
    assert headings == ["## Training data", "## Held-out evaluation", "## Limitations", "## Reproduce"]


def test_papers_are_cited_by_their_full_titles():
    docs = _docs()
    assert len(docs) > 40 and "ARCHITECTURE.md" in docs and "nnunet_liver/postprocessing/seg2det.py" in docs
    missing = [f"{name}: {title[:40]}..." for name, text in docs.items() for marks, title in PAPERS.items()
               if any(m in text for m in marks) and title not in _flat(text)]
    assert not missing, "a paper cited without its full title:\n" + "\n".join(missing)


def test_no_doc_mentions_the_issue_tracker():
    found = [name for name, text in _docs().items() if re.search(r"\bthe issue\b|\bissue \d|\bissue's\b", text, re.I)]
    assert not found, found
