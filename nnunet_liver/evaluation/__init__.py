"""Lesion- and patient-level evaluation (Wang et al., the cascade: Tables I, II, IV, V; Huang et al., LIDIA: Table 3)
plus FROC, AP and Dice. Where it sits in the data flow: ARCHITECTURE.md at the repository root.

Papers: Wang et al., "A Cascaded Approach for ultraly High Performance Lesion Detection and False Positive Removal in
Liver CT Scans"; Huang et al., "LIDIA: Precise Liver Tumor Diagnosis on Multi-Phase Contrast-Enhanced CT via Iterative
Fusion and Asymmetric Contrastive Learning" (MICCAI).
"""
from nnunet_liver.evaluation.metrics import (FROC_RATES, SIZE_BINS_CM3, AUCTable, DiceSummary, FROCResult, LesionRow,
                                             PatientTable, TypeAUC, auc_mann_whitney, auc_table, average_precision,
                                             dice_from_counts, dice_summary, froc, lesion_row, lesion_table,
                                             patient_table, reference_counts_table, size_bin, strata_table)
from nnunet_liver.evaluation.evaluate import CaseEvaluation, EvaluationResult, evaluate_case, evaluate_folders

__all__ = ["FROC_RATES", "SIZE_BINS_CM3", "LesionRow", "PatientTable", "TypeAUC", "AUCTable", "FROCResult",
           "DiceSummary", "auc_mann_whitney", "auc_table", "average_precision", "dice_from_counts", "dice_summary",
           "froc", "lesion_row", "lesion_table", "patient_table", "reference_counts_table", "size_bin",
           "strata_table", "CaseEvaluation", "EvaluationResult", "evaluate_case", "evaluate_folders"]
