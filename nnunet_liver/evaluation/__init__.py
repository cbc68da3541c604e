"""Lesion- and patient-level evaluation (Wang et al., the cascade: Tables I, II, IV, V; Huang et al., LIDIA: Table 3)
plus FROC, AP and Dice. Where it sits in the data flow: ARCHITECTURE.md at the repository root."""
from nnunet_liver.evaluation.metrics import (FROC_RATES, SIZE_BINS_CM3, auc_mann_whitney, auc_table,
                                             average_precision, dice_from_counts, froc, lesion_row, lesion_table,
                                             patient_table, reference_counts_table, size_bin, strata_table)
from nnunet_liver.evaluation.evaluate import EvaluationResult, evaluate_case, evaluate_folders

__all__ = ["FROC_RATES", "SIZE_BINS_CM3", "auc_mann_whitney", "auc_table", "average_precision", "dice_from_counts",
           "froc", "lesion_row", "lesion_table", "patient_table", "reference_counts_table", "size_bin",
           "strata_table", "EvaluationResult", "evaluate_case", "evaluate_folders"]
