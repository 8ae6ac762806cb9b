from collections import Counter

import pytest

from mladv.data import split_imageset, stratified_split


def test_split_is_stratified_and_about_15_percent():
    labels = [0] * 100 + [1] * 60 + [2] * 40
    train, test = stratified_split(labels, seed=0)
    counts = Counter(labels[i] for i in test)
    assert counts == {0: 15, 1: 9, 2: 6}
    assert sorted(train + test) == list(range(200))


def test_split_keeps_each_patient_on_one_side():
    labels = [0] * 40 + [1] * 40
    groups = [f"p{i // 3}" for i in range(80)]  # 3 images per patient
    train, test = stratified_split(labels, groups, seed=1)
    assert not {groups[i] for i in train} & {groups[i] for i in test}


def test_split_is_seeded():
    labels = [0, 1] * 50
    assert stratified_split(labels, seed=5) == stratified_split(labels, seed=5)
    assert stratified_split(labels, seed=5) != stratified_split(labels, seed=6)


@pytest.mark.parametrize("size", [0, 1, 1.5])
def test_split_rejects_bad_test_size(size):
    with pytest.raises(ValueError, match="test_size"):
        stratified_split([0, 1], test_size=size)


def test_cxr3_split_is_patient_disjoint(cxr3_root):
    from mladv.data import load_folder

    data = load_folder(cxr3_root, 32)
    train, test = split_imageset(data, seed=0)
    assert not set(train.groups) & set(test.groups)
    assert 0.12 < len(test) / len(data) < 0.18
