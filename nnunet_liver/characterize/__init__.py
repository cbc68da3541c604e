"""Second-stage lesion characterization (CHARACTERIZE.md): per lesion, Sarfati et al.'s handcrafted LI-RADS features,
radiomics, deep LI-RADS sub-models, and regularised logistic regressions giving a calibrated HCC probability; the
LI-RADS v2018 category as a suggestion for patients at risk; their evaluation.

Papers: Sarfati et al., "Guiding the classification of hepatocellular carcinoma on 3D CT-scans using deep and handcrafted
radiological features".
"""
