import pytest

from nnunet_liver import labels


def test_scheme_matches_design_table():
    assert labels.NUM_CLASSES == 14
    assert [l.name for l in labels.LABELS[:7]] == ["background", "HCC", "ICC", "Meta", "Hem", "Other", "Cyst"]
    assert labels.LESION_IDS == (1, 2, 3, 4, 5, 6)
    assert labels.ORGAN_IDS == tuple(range(7, 14))
    assert labels.MALIGNANT_IDS == (1, 2, 3)
    assert labels.BENIGN_IDS == (4, 5, 6)
    assert labels.LESION_PRIORITY == (1, 2, 3, 4, 5, 6)


def test_dataset_json_labels_are_consecutive_and_named():
    d = labels.dataset_json_labels()
    assert sorted(d.values()) == list(range(14))
    assert d["background"] == 0 and d["liver"] == 7 and d["stomach"] == 13
    p = labels.patch_dataset_json_labels()
    assert p == {"background": 0, "HCC": 1, "ICC": 2, "Meta": 3, "Hem": 4, "Other": 5, "Cyst": 6, "liver": 7}


def test_name_id_round_trip_and_errors():
    for l in labels.LABELS:
        assert labels.id_of(labels.name_of(l.id)) == l.id
    assert labels.id_of("hcc") == 1
    with pytest.raises(ValueError, match="unknown label name"):
        labels.id_of("tumour")
    with pytest.raises(ValueError, match="not in the scheme"):
        labels.name_of(14)


def test_priority_rank_and_validation():
    assert labels.priority_rank(labels.HCC) == 0
    assert labels.priority_rank(labels.CYST) == 5
    assert labels.priority_rank(labels.LIVER) == 6
    labels.validate_label_values([0, 1, 13])
    with pytest.raises(ValueError, match=r"\[14, 20\]"):
        labels.validate_label_values([0, 14, 20])


def test_is_malignant_is_the_one_accessor_for_ids_names_and_patient_classes():
    assert [labels.is_malignant(i) for i in range(labels.NUM_CLASSES)] == \
        [i in (labels.HCC, labels.ICC, labels.META) for i in range(labels.NUM_CLASSES)]
    assert [labels.is_malignant(n) for n in labels.LESION_NAMES] == [True, True, True, False, False, False]
    assert labels.is_malignant("meta") is True and labels.is_malignant("liver") is False
    assert labels.is_malignant(labels.NORMAL) is False and labels.is_malignant(labels.UNCERTAIN) is None
    with pytest.raises(ValueError, match="unknown label name"):
        labels.is_malignant("tumour")


def test_uncertain_is_spelt_in_labels_only():
    """The patient class "uncertain" is ``labels.UNCERTAIN``: no other module of the package or the scripts spells
    it (JSON keys counting uncertain cases excepted: ``PatientTable.uncertain``'s key, read back by the demo)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    found = []
    for folder in ("nnunet_liver", "dataset_conversion", "scripts"):
        for path in (root / folder).rglob("*.py"):
            if path.relative_to(root).as_posix() == "nnunet_liver/labels.py":
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            keys = {id(k) for d in ast.walk(tree) if isinstance(d, ast.Dict) for k in d.keys if k is not None}
            keys |= {id(s.slice) for s in ast.walk(tree) if isinstance(s, ast.Subscript)}
            docs = {id(n.body[0].value) for n in ast.walk(tree)
                    if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                    and isinstance(n.body[0], ast.Expr)}
            found += [f"{path.relative_to(root)}:{c.lineno}" for c in ast.walk(tree)
                      if isinstance(c, ast.Constant) and c.value == labels.UNCERTAIN and id(c) not in keys | docs]
    assert not found, f'"uncertain" spelt outside labels.py: {found}'
