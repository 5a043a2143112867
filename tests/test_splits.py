import numpy as np
import pytest

from cli_errors import UserError
from data.splits import draw_known_classes, open_set_split, parse_known

LABELS = np.repeat(np.arange(10), 50)


@pytest.mark.parametrize("split_seed", range(5))
def test_unknown_classes_never_reach_train_or_val(split_seed):
    known = draw_known_classes(10, 6, split_seed)
    split = open_set_split(LABELS, known, split_seed)
    assert len(known) == 6
    for part in (split.train, split.val, split.test_known):
        assert set(LABELS[part]) <= set(known)
    assert set(LABELS[split.test_unknown]) == set(range(10)) - set(known)
    assert len(split.test_unknown) == 4 * 50
    every = np.concatenate([split.train, split.val, split.test_known, split.test_unknown])
    assert len(every) == len(set(every)) == len(LABELS)


def test_split_is_stratified_and_deterministic():
    split = open_set_split(LABELS, (0, 1, 2, 3, 4, 5), 3, val_fraction=0.1, test_fraction=0.2)
    assert np.bincount(LABELS[split.train], minlength=6)[:6].tolist() == [35] * 6
    assert np.bincount(LABELS[split.val], minlength=6)[:6].tolist() == [5] * 6
    again = open_set_split(LABELS, (0, 1, 2, 3, 4, 5), 3, val_fraction=0.1, test_fraction=0.2)
    assert np.array_equal(split.train, again.train)
    other = open_set_split(LABELS, (0, 1, 2, 3, 4, 5), 4, val_fraction=0.1, test_fraction=0.2)
    assert not np.array_equal(split.train, other.train)


def test_relabel_maps_known_order_and_marks_unknown():
    split = open_set_split(LABELS, (7, 2, 5), 0)
    assert split.relabel(np.array([7, 2, 5, 0])).tolist() == [0, 1, 2, -1]


def test_splits_differ_across_seeds():
    assert len({draw_known_classes(10, 6, s) for s in range(5)}) == 5


def test_parse_known_accepts_indices_and_names():
    assert parse_known("0,3, 5", [str(i) for i in range(10)]) == (0, 3, 5)
    assert parse_known("cat,dog", ["dog", "cat", "bird"]) == (1, 0)


@pytest.mark.parametrize("text,message", [("0,11", "'11'"), ("0,0", "distinct"), ("3", "at least 2"),
                                          ("0,x", "'x'")])
def test_parse_known_rejects_bad_classes(text, message):
    with pytest.raises(UserError, match=message):
        parse_known(text, [str(i) for i in range(10)])


def test_all_classes_known_is_a_closed_set_split():
    known = draw_known_classes(10, 10, split_seed=3)
    assert known == tuple(range(10))
    assert parse_known("9,8,7,6,5,4,3,2,1,0", [str(c) for c in range(10)]) == tuple(range(9, -1, -1))
    split = open_set_split(LABELS, known, 0)
    assert len(split.test_unknown) == 0
    assert len(split.train) + len(split.val) + len(split.test_known) == len(LABELS)
