"""The split of calibration batches over ranks (the two-process run itself: test_resume.py)."""

import pytest
import torch

from pvq.errors import QuantizeError
from pvq.models.distributed import Parallel


@pytest.mark.parametrize("n, batch, world", [(4, 2, 2), (128, 8, 2), (130, 8, 4), (9, 4, 3), (7, 1, 7)])
def test_ranks_take_contiguous_runs_of_whole_batches(n, batch, world):
    parts = [Parallel(r, world, torch.device("cpu")).local_samples(n, batch) for r in range(world)]
    assert parts[0].start == 0 and parts[-1].stop == n
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))  # contiguous, no overlap, in rank order
    assert all(p.start % batch == 0 and p.stop > p.start for p in parts)  # whole batches, none empty
    sizes = [-(-(p.stop - p.start) // batch) for p in parts]
    assert max(sizes) - min(sizes) <= 1  # balanced to one batch


def test_too_few_batches_for_the_ranks_are_refused():
    with pytest.raises(QuantizeError, match="fewer than the 3 ranks"):
        Parallel(0, 3, torch.device("cpu")).local_samples(4, 2)
    with pytest.raises(QuantizeError, match="rank 2 is not in"):
        Parallel(2, 2, torch.device("cpu"))
