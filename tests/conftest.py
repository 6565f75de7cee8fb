"""Shared test settings."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The models in the tests are tiny: intra-op threads only add overhead, and on a 2-core
    machine shared with a notebook kernel they slow everything down by orders of magnitude."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
