from __future__ import annotations

import os
from pathlib import Path

import pytest

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    # Triton kernels run under the interpreter on CPU; must be set before any kernel is defined.
    os.environ.setdefault("TRITON_INTERPRET", "1")


SERVER_TESTS = Path(__file__).parent / "server"


def pytest_collection_modifyitems(config, items):
    """tests/server starts real SGLang processes: marked ``server`` by where they live (so
    ``-m "not server"`` starts none); GPU tests skip on hosts without CUDA."""
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if SERVER_TESTS in Path(item.fspath).parents:
            item.add_marker(pytest.mark.server)
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    from redknot_sglang.testing.models import smollm2_dir

    try:
        return smollm2_dir()
    except RuntimeError as e:  # the GPU machine gets the GGUF only when it was carried
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def smollm2_fingerprint(smollm2):
    from redknot_sglang.heads.fingerprint import fingerprint_of_model_path

    return fingerprint_of_model_path(str(smollm2))


@pytest.fixture
def tmp_profile(tmp_path):
    """Write a profile (HeadProfile or raw JSON text) and return its path."""

    def write(profile, name="p.json"):
        path = tmp_path / name
        if isinstance(profile, str):
            path.write_text(profile)
        else:
            profile.save(path)
        return path

    return write
