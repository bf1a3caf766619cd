import os

# Two cores are shared by the test process and whatever else runs; one intra-op
# thread avoids oversubscription stalls in torch's CPU kernels.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
if not torch.cuda.is_available():  # Triton kernels run in its interpreter (numpy) on CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def tiny_model():
    """Factory of tiny random models: ``tiny_model(family="llama", seed=0, **config_overrides)``
    (see ``tests/tiny_models.py``)."""
    from tiny_models import tiny

    return tiny


@pytest.fixture(scope="session")
def calib_ids():
    """Factory of seeded calibration ids: ``calib_ids(n=8, length=32, seed=1) -> [n, length]``."""
    from tiny_models import calib

    return calib


@pytest.fixture(scope="session")
def char_tokenizer():
    """A character-level tokenizer that needs no download."""
    from tiny_models import char_tokenizer as make

    return make()
