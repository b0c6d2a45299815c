"""brlib.sampling against the paper's description of Figure 3's minibatches, written out."""

import numpy as np
import pytest

from brlib import sampling

LABELS = np.repeat(np.arange(10), 7)[np.random.default_rng(0).permutation(70)]


def test_indices_by_class_lists_every_example_once():
    by_class = sampling.indices_by_class(LABELS)
    assert sorted(np.concatenate(by_class)) == list(range(70))
    for label, members in enumerate(by_class):
        assert np.all(LABELS[members] == label)


def test_a_class_with_fewer_than_two_examples_is_named():
    labels = np.array([0, 0, 1, 2, 2])
    with pytest.raises(ValueError, match=r"`labels`.*classes \[1\]"):
        sampling.indices_by_class(labels)


def test_each_group_is_16_pairs_of_one_label_with_one_member_in_each_half():
    by_class = sampling.indices_by_class(LABELS)
    batch = sampling.paired_minibatch(by_class, seed=3, step=5, minibatch_size=128)
    assert batch.shape == (128,)
    for group in batch.reshape(4, 32):
        first, second = group[:16], group[16:]
        # Pair i is (first[i], second[i]): two different examples of one label.
        np.testing.assert_array_equal(LABELS[first], LABELS[second])
        assert np.all(first != second)


def test_labels_are_drawn_uniformly_with_replacement():
    by_class = sampling.indices_by_class(LABELS)
    labels = np.concatenate([LABELS[sampling.paired_minibatch(by_class, 0, step, 32)[:16]]
                             for step in range(500)])
    counts = np.bincount(labels, minlength=10) / len(labels)
    np.testing.assert_allclose(counts, 0.1, atol=0.015)
    # With replacement: 16 labels from 10 classes must repeat in every group.
    assert all(len(set(LABELS[sampling.paired_minibatch(by_class, 0, s, 32)[:16]])) < 16
               for s in range(20))


def test_a_draw_depends_on_seed_and_step_alone():
    by_class = sampling.indices_by_class(LABELS)
    a = sampling.paired_minibatch(by_class, seed=1, step=7, minibatch_size=64)
    # Drawing other steps in between (or nothing, as after a resume) changes nothing.
    for step in range(7):
        sampling.paired_minibatch(by_class, seed=1, step=step, minibatch_size=64)
    np.testing.assert_array_equal(a, sampling.paired_minibatch(by_class, 1, 7, 64))
    assert not np.array_equal(a, sampling.paired_minibatch(by_class, 1, 8, 64))
    assert not np.array_equal(a, sampling.paired_minibatch(by_class, 2, 7, 64))


def test_test_and_calibration_batches_are_fixed_and_apart():
    by_class = sampling.indices_by_class(LABELS)
    test = sampling.paired_batches(by_class, seed=0, count=5)
    assert test.shape == (5, 32)
    np.testing.assert_array_equal(test, sampling.paired_batches(by_class, 0, 5))
    assert not np.array_equal(test, sampling.paired_batches(by_class, 0, 5, purpose="calibration"))


def test_minibatch_must_hold_whole_groups():
    by_class = sampling.indices_by_class(LABELS)
    with pytest.raises(ValueError, match="`minibatch_size`=48 must be a multiple"):
        sampling.paired_minibatch(by_class, 0, 0, 48)


def test_same_label_partners_against_a_loop():
    labels = np.random.default_rng(1).integers(0, 3, size=(4, 8))
    expected = [[sum(labels[g, j] == labels[g, i] for j in range(8) if j != i) for i in range(8)]
                for g in range(4)]
    np.testing.assert_array_equal(sampling.same_label_partners(labels, 8), expected)


def test_pairs_share_labels_more_often_than_iid_groups():
    """With 10 classes: 1 + 30/10 = 4 same-label others per example, against 31/10 in i.i.d. groups."""
    by_class = sampling.indices_by_class(LABELS)
    paired = np.concatenate([LABELS[sampling.paired_minibatch(by_class, 0, s, 32)]
                             for s in range(400)])
    iid = LABELS[np.random.default_rng(0).integers(0, 70, size=400 * 32)]
    assert abs(sampling.same_label_partners(paired).mean() - 4.0) < 0.15
    assert abs(sampling.same_label_partners(iid).mean() - 3.1) < 0.15


def test_epoch_order_is_a_new_permutation_every_epoch():
    a, b = sampling.epoch_order(0, 0, 50), sampling.epoch_order(0, 1, 50)
    assert sorted(a) == list(range(50)) and not np.array_equal(a, b)
    np.testing.assert_array_equal(a, sampling.epoch_order(0, 0, 50))


def test_test_order_is_a_fixed_permutation_filled_to_whole_groups():
    order = sampling.test_order(3, 10, 4)
    assert len(order) == 12
    np.testing.assert_array_equal(np.sort(order[:10]), np.arange(10))  # every example once
    np.testing.assert_array_equal(order[10:], order[:2])  # then the first ones again
    np.testing.assert_array_equal(order, sampling.test_order(3, 10, 4))
    assert not np.array_equal(order[:10], sampling.test_order(4, 10, 4)[:10])
    np.testing.assert_array_equal(sampling.test_order(3, 10, 2), order[:10])  # whole groups: as is


def test_remix_keeps_the_examples_and_splits_every_pair_across_two_groups():
    # Positions stand for examples: pair i of group g is (32 g + i, 32 g + 16 + i).
    batch = np.arange(128)
    mixed = sampling.remix(batch).reshape(4, 32)
    np.testing.assert_array_equal(np.sort(mixed.ravel()), batch)
    for group in mixed:
        pair_ids = [(index // 32, index % 16) for index in group]
        assert len(set(pair_ids)) == 32  # no two members of one pair
        # Half of the group is its own first members, as in the two halves control.
        assert {index // 32 for index in group[:16]} != {index // 32 for index in group[16:]}
    with pytest.raises(ValueError, match="at least 2 groups"):
        sampling.remix(batch[:32])


@pytest.mark.parametrize("classes, groups", [(300, 3), (300, 16), (40, 2)])
def test_step_variety_matches_the_distinct_classes_of_drawn_steps(classes, groups):
    labels = np.repeat(np.arange(classes), 4)
    by_class = sampling.indices_by_class(labels)
    variety = sampling.step_variety(classes, groups)
    paired = [len(set(labels[sampling.paired_minibatch(by_class, 0, step, 32 * groups)]))
              for step in range(400)]
    rng = np.random.default_rng(0)
    iid = [len(set(rng.integers(0, classes, size=32 * groups))) for _ in range(400)]
    for draws, sampled in (("pairs", paired), ("iid", iid)):
        assert np.mean(sampled) == pytest.approx(variety[draws]["distinct"], rel=0.02)
        assert variety[draws]["per_class"] * variety[draws]["distinct"] == pytest.approx(
            32 * groups)


def test_the_papers_workers_see_about_551_labels_paired_and_798_iid():
    variety = sampling.step_variety(1000, 50)
    assert round(variety["pairs"]["distinct"]) == 551 and round(variety["iid"]["distinct"]) == 798
