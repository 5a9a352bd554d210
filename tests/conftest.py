import pytest
import torch


@pytest.fixture(autouse=True)
def _fixed_threads():
    """Tests run on 2 cores; pin threads so timings and results stay stable."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
