"""Shared test settings."""

import pytest
import torch
from hypothesis import settings

# The same examples on every run and machine: a CI failure reproduces locally, and a test never
# passes or fails by the luck of the draw. Explore with `--hypothesis-seed=random` when hunting.
settings.register_profile("stabilitylab", derandomize=True, database=None)
settings.load_profile("stabilitylab")


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The models in the tests are tiny: intra-op threads only add overhead, and on a 2-core
    machine shared with a notebook kernel they slow everything down by orders of magnitude."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same global random state, whatever ran before it: a test that
    draws unseeded data sees the same data in any order, in any selection of tests."""
    torch.manual_seed(0)
