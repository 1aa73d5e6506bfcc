import pytest

from cluster.config import load_config


@pytest.fixture
def cfg():
    """The tiny preset: 16 px networks that step in milliseconds."""
    return load_config("tiny")
