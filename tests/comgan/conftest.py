import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread for the test, restored after it. The tiny nets' ops take microseconds,
    and each multithreaded one ends at an OpenMP barrier: with two threads on two cores that other
    work keeps busy (a CI runner, an experiment beside the tests) every op waits for the descheduled
    thread, and the same steps ran 20 to 80 times slower (8 s for one 32 px step against 0.1 s).
    What a test compares runs in the same thread count on both sides."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
