"""Shared fixtures. The device comes from NASP_TEST_DEVICE (default "cpu"); GPU tests skip without CUDA."""

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny test models run fastest on one thread and do not oversubscribe a shared 2-core CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def device() -> torch.device:
    name = os.environ.get("NASP_TEST_DEVICE", "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip(f"NASP_TEST_DEVICE={name} but CUDA is not available")
    return torch.device(name)


@pytest.fixture(scope="session")
def data_dir():
    """The shared real-data folder (NASP_DATA_DIR); tests that need it skip when it is absent."""
    path = os.environ.get("NASP_DATA_DIR")
    if not path or not os.path.isdir(path):
        pytest.skip("NASP_DATA_DIR is not set or does not exist (real data is not shipped with the repository)")
    return path
