"""Test set-up: 8 fake CPU devices (multi-device code is tested on CPU), strict rank promotion."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="module", autouse=True)
def _release_compiled():
    """A pytest-xdist worker compiles ~20k XLA programs over half the suite; each keeps ~3 memory
    mappings, and past the kernel's vm.max_map_count (65,530) XLA's compiler segfaults
    (`routecal.parallel.release_compiled`)."""
    yield
    from routecal import parallel

    parallel.release_compiled()


@pytest.fixture
def key():
    return jax.random.key(0)
