"""`BuildSummary.ids` is an `IdRanges`: one pair per run of ids, never one Python int per image."""

import json

import numpy as np
import pytest

from indexer.summary import BuildSummary, IdRanges


def test_id_ranges_behave_like_the_sorted_list_of_ids():
    ids = IdRanges.from_ids(np.array([9, 0, 1, 2, 5, 6, 6]))
    assert ids.ranges == ((0, 3), (5, 7), (9, 10))
    assert len(ids) == 6 and ids.tolist() == [0, 1, 2, 5, 6, 9] and list(ids) == [0, 1, 2, 5, 6, 9]
    assert ids == [0, 1, 2, 5, 6, 9] and ids != [0, 1, 2] and ids == IdRanges([(0, 3), (5, 7), (9, 10)])
    assert [i for i in range(-1, 12) if i in ids] == [0, 1, 2, 5, 6, 9] and np.int64(5) in ids and "5" not in ids
    assert IdRanges.from_ids([]) == [] and len(IdRanges()) == 0
    # indexing as on the list (summary.ids[0] in callers and tests)
    assert [ids[i] for i in range(6)] == [0, 1, 2, 5, 6, 9] and ids[-1] == 9 and ids[-6] == 0
    for bad in (6, -7):
        with pytest.raises(IndexError):
            ids[bad]


def test_a_10m_build_summary_holds_its_ids_in_a_few_pairs():
    ids = np.arange(10_000_000, dtype=np.int64)
    ids = ids[(ids != 17) & (ids != 5_000_000)]  # two skipped files
    summary = BuildSummary(index_dir="x", ids=IdRanges.from_ids(ids), indexed=len(ids))
    assert summary.ids.ranges == ((0, 17), (18, 5_000_000), (5_000_001, 10_000_000))
    assert len(summary.ids) == 9_999_998
    # --json prints the pairs
    assert json.loads(json.dumps(summary.as_dict()))["id_ranges"] == [[0, 17], [18, 5_000_000], [5_000_001, 10_000_000]]
