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
