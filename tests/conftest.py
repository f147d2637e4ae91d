import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Fixed seed; one intra-op thread: the tests run many tiny ops, several times faster single-threaded on 2 cores."""
    torch.manual_seed(0)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
