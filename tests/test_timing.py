"""Timing helpers: what they measure, never how fast anything is."""

import pytest
import torch

from stabilitylab import timing


def test_peak_memory_sees_a_large_temporary():
    def work():
        big = torch.ones(1_000_000)  # 4 MB, freed before the end
        return float(big.sum())

    assert timing.peak_memory(work) >= 4_000_000
    assert timing.peak_memory(lambda: None) < 4_000_000


def test_median_time_rejects_bad_repeats():
    with pytest.raises(ValueError, match="repeats"):
        timing.median_time(lambda: None, repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        timing.median_time(lambda: None, warmup=-1)
