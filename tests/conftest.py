import os

import pytest

# Keras reads its backend once, at import: choose JAX unless the caller chose another.
os.environ.setdefault("KERAS_BACKEND", "jax")

# Most of this suite's time on a CPU is XLA compiling small programs. The tests check values,
# never speed, so XLA:CPU compiles them without LLVM's optimisations (about half the compile
# time, for programs that run a few times), unless the caller chose a level. Set before JAX
# starts its backend; the subprocesses (notebook kernels, command-line runs) inherit it.
_FLAGS = os.environ.get("XLA_FLAGS", "").split()
if not any(f.startswith("--xla_backend_optimization_level=") for f in _FLAGS):
    os.environ["XLA_FLAGS"] = " ".join([*_FLAGS, "--xla_backend_optimization_level=0"])


@pytest.fixture(scope="session")
def programs_folder(tmp_path_factory):
    """The session's persistent compilation cache folder, shared by the xdist workers, the
    tests themselves and the training subprocesses (``train_env`` of ``tests/train``)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the workers of this session
    return base / "jax_cache"


def _cache_in(folder) -> None:
    """JAX's persistent compilation cache in ``folder`` from the next compile (None: none)."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_compilation_cache_dir", None if folder is None else str(folder))
    compilation_cache.reset_cache()


@pytest.fixture(scope="session", autouse=True)
def _shared_compiled_programs(programs_folder):
    """A program compiled by one test is loaded, not compiled again, by another test (or
    another worker) that builds the same program: JAX's persistent cache in a folder of this
    session only, so no program from elsewhere is ever loaded."""
    import jax

    if jax.config.jax_compilation_cache_dir:  # the caller's own cache
        yield
        return
    _cache_in(programs_folder)
    yield
    _cache_in(None)


@pytest.fixture
def no_compilation_cache():
    """No persistent compilation cache during the test (for the tests of the cache itself)."""
    import jax

    folder = jax.config.jax_compilation_cache_dir
    _cache_in(None)
    yield
    _cache_in(folder)
