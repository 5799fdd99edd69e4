"""Shared test configuration: hypothesis profiles (`dev`, derandomised `ci`) and common fixtures."""
import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# One torch thread in tests: pytest-xdist runs one worker per core, and a second torch thread per
# worker only oversubscribes the cores (measured here: a 262k-element sigmoid took 12 ms with 2
# threads under load, 0.25 ms with 1). The tests' tensors are small anyway.
import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """CUDA tests skip cleanly on machines without a GPU (CI never has one)."""
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def rng():
    """A seeded generator: tests never touch the global random state."""
    return np.random.default_rng(12345)
