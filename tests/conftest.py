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


# Each test body runs on a fresh thread, whose frame stack starts empty. CPython 3.11 keeps Python frames in
# chunks of a per-thread stack and frees a chunk as soon as the last frame in it returns: code whose calls
# cross a chunk's end in a hot loop allocates and frees a chunk on every call. Under pytest a test body
# starts about 30 frames deep, where the Triton interpreter's loops often straddle such an end: the tiny
# compiled-step test took 34.7 s under pytest against 16.5 s standalone, and the same decode took 4.1 s at
# depth 0 or 100, 8.0-10.2 s at depths 40, 60 or 200, 4.2 s on a fresh thread (the probe:
# benchmarks/interpreter_stack_depth.py). Done only where there is no CUDA (CI: the Triton kernels run in the
# interpreter); PVQ_TESTS_IN_MAIN_THREAD=1 turns it off.
@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    import threading

    in_main = os.environ.get("PVQ_TESTS_IN_MAIN_THREAD")
    if torch.cuda.is_available() or in_main or not hasattr(pyfuncitem, "_fixtureinfo"):
        return None  # pytest's own call (CUDA machines: Triton compiled, not interpreted; CUDA streams are per thread)
    func = pyfuncitem.obj
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    grad = torch.is_grad_enabled()  # torch's grad mode is per thread
    failure: list[BaseException] = []

    def body():
        try:
            with torch.set_grad_enabled(grad):
                func(**kwargs)
        except BaseException as e:  # noqa: BLE001  (re-raised on the test's thread below)
            failure.append(e)

    runner = threading.Thread(target=body, name=f"test {pyfuncitem.name}")
    runner.start()
    runner.join()
    if failure:
        raise failure[0]
    return True
