"""Which training examples make up each minibatch: i.i.d. epochs, or the paper's pairs.

NumPy only. Every draw is a function of (seed, step) alone, so a resumed run
sees the same minibatches as an uninterrupted one.
"""

import numpy as np

from brlib.protocol import GROUP  # examples per worker, and per normalization group, in Figure 3

# Tags keep the random streams of the samplers apart for the same (seed, step).
_PAIRS, _TEST_PAIRS, _CALIBRATION_PAIRS, _TEST_GROUPS = 11, 13, 17, 19


def epoch_order(seed, epoch, size):
    """The shuffle of epoch `epoch`: a permutation of range(size), new every epoch."""
    return np.random.default_rng([seed, epoch]).permutation(size)


def test_order(seed, size, group_size):
    """The test split in random groups of `group_size`, fixed per seed, as i.i.d. training draws them.

    A permutation of range(size), continued from its start to fill the last
    group when `group_size` does not divide `size`. Scoring only the first
    `size` positions counts every example once, each normalized among
    `group_size` − 1 random others.
    """
    order = np.random.default_rng([seed, _TEST_GROUPS]).permutation(size)
    return np.concatenate([order, order[:-size % group_size]]) if size % group_size else order


def indices_by_class(labels):
    """Example indices of each class 0 … C−1; every class must have two examples or more."""
    labels = np.asarray(labels).ravel()
    by_class = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
    short = [c for c, members in enumerate(by_class) if len(members) < 2]
    if short:
        raise ValueError(f"`labels` must hold at least 2 examples of every class 0…"
                         f"{len(by_class) - 1} to draw pairs; classes {short} have fewer.")
    return by_class


def paired_groups(by_class, rng, groups, group_size=GROUP):
    """`groups` groups of `group_size` examples built as pairs of one label each.

    Each group holds group_size / 2 labels drawn uniformly with replacement
    and, for each label, two different examples of that label drawn
    uniformly. A label drawn twice gives two independent pairs. Within a
    group the first members of the pairs come first and the second members
    after them, in the same label order, so each half of the group holds one
    example of every pair (the paper's "two halves" control).

    Returns:
        An int array of shape (groups * group_size,) of example indices.
    """
    pairs = group_size // 2
    classes = rng.integers(0, len(by_class), size=(groups, pairs))
    sizes = np.array([len(members) for members in by_class])[classes]
    first = rng.integers(0, sizes)
    second = (first + 1 + rng.integers(0, sizes - 1)) % sizes  # any other member of the class
    pick = np.vectorize(lambda c, i: by_class[c][i], otypes=[np.int64])
    return np.concatenate([pick(classes, first), pick(classes, second)], axis=1).ravel()


def paired_minibatch(by_class, seed, step, minibatch_size, group_size=GROUP):
    """The training minibatch of `step`: minibatch_size / group_size paired groups."""
    _check_groups(minibatch_size, group_size)
    rng = np.random.default_rng([seed, step, _PAIRS])
    return paired_groups(by_class, rng, minibatch_size // group_size, group_size)


def paired_batches(by_class, seed, count, group_size=GROUP, purpose="test"):
    """`count` fixed batches of one paired group each, for evaluation or recalibration."""
    tag = {"test": _TEST_PAIRS, "calibration": _CALIBRATION_PAIRS}[purpose]
    rng = np.random.default_rng([seed, tag])
    return paired_groups(by_class, rng, count, group_size).reshape(count, group_size)


def remix(minibatch, group_size=GROUP):
    """The paired `minibatch` with every pair split across two of its groups.

    Group g keeps the first members of its own pairs and takes the second
    members of group g + 1's (the last group those of the first), so the
    step trains on the same examples, yet no group holds both members of a
    pair: the paper's two halves control, carried across the step's groups,
    as MoCo shuffles its batch across workers.

    Args:
        minibatch: Example indices of shape (groups * group_size,), as
            `paired_minibatch` returns them (each group's first members first).
        group_size: Examples per group.

    Returns:
        The same indices, re-ordered, in groups of `group_size`.
    """
    groups = np.asarray(minibatch).reshape(-1, group_size)
    if len(groups) < 2:
        raise ValueError(f"`minibatch` must hold at least 2 groups of {group_size} to be "
                         f"re-mixed; got {len(groups)}.")
    half = group_size // 2
    return np.concatenate([groups[:, :half], np.roll(groups[:, half:], -1, axis=0)],
                          axis=1).ravel()


def _check_groups(minibatch_size, group_size):
    if group_size < 2 or group_size % 2:
        raise ValueError(f"`group_size` must be an even integer >= 2; got {group_size!r}.")
    if minibatch_size % group_size:
        raise ValueError(f"`minibatch_size`={minibatch_size} must be a multiple of the group "
                         f"size {group_size}.")


def expected_distinct_classes(classes, draws):
    """Expected number of distinct classes among `draws` labels drawn uniformly, with replacement."""
    return classes * (1 - (1 - 1 / classes) ** draws)


def step_variety(classes, groups, group_size=GROUP):
    """How many classes one training step holds, paired and i.i.d., in expectation.

    A paired step draws groups × group_size / 2 labels (two examples each),
    an i.i.d. step groups × group_size labels (classes balanced). For the
    paper's 50 groups of 32 over 1000 classes: about 551 distinct labels
    paired, 798 i.i.d.

    Returns:
        {"pairs" | "iid": {"distinct": expected distinct classes,
        "per_class": expected examples of each class present}}.
    """
    examples = groups * group_size
    variety = {}
    for sampling, draws in (("pairs", examples // 2), ("iid", examples)):
        distinct = expected_distinct_classes(classes, draws)
        variety[sampling] = {"distinct": distinct, "per_class": examples / distinct}
    return variety


def same_label_partners(labels, group_size=GROUP):
    """For each example of each group, how many others in its group share its label.

    `labels` is an array of shape (groups, group_size). Used to compare the
    paired sampler with i.i.d. groups: with 10 classes, labels repeat within
    a group far more often than with the paper's 1000.
    """
    labels = np.asarray(labels).reshape(-1, group_size)
    same = labels[:, :, None] == labels[:, None, :]
    return same.sum(axis=2) - 1
