"""Lesion- and patient-level evaluation (seed 003 Tables I, II, IV, V; seed 002 Table 3) plus FROC, AP and Dice."""
from nnunet_liver.evaluation.metrics import (FROC_RATES, SIZE_BINS_CM3, auc_mann_whitney, auc_table,
                                             average_precision, dice_from_counts, froc, lesion_row, lesion_table,
                                             patient_table, reference_counts_table, size_bin, strata_table)
from nnunet_liver.evaluation.evaluate import EvaluationResult, evaluate_case, evaluate_folders

__all__ = ["FROC_RATES", "SIZE_BINS_CM3", "auc_mann_whitney", "auc_table", "average_precision", "dice_from_counts",
           "froc", "lesion_row", "lesion_table", "patient_table", "reference_counts_table", "size_bin",
           "strata_table", "EvaluationResult", "evaluate_case", "evaluate_folders"]
