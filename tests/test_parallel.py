"""routecal.parallel: backend-aware engine sizes, process helpers, and engines that give the same
null whatever the strategy (lanes, scan step, devices)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy.stats import ks_2samp

from routecal import parallel
from routecal.stats import diagnostics


def test_engine_sizes_by_backend():
    assert parallel.engine_sizes("cpu") == parallel.engine_sizes()  # the tests run on CPU
    assert parallel.engine_sizes("cuda") == parallel.engine_sizes("gpu")
    cpu, gpu = parallel.engine_sizes("cpu"), parallel.engine_sizes("gpu")
    assert (cpu.permutation_lanes, cpu.scan_block) == (192, 16)
    assert gpu.permutation_lanes > cpu.permutation_lanes and gpu.scan_block > cpu.scan_block
    with pytest.raises(ValueError, match="backend"):
        parallel.engine_sizes("abacus")


@pytest.mark.parametrize("n_processes", [1, 2, 3, 4])
def test_process_slice_splits_like_array_split(monkeypatch, n_processes):
    n = 10
    parts = []
    for i in range(n_processes):
        monkeypatch.setattr(jax, "process_count", lambda: n_processes)
        monkeypatch.setattr(jax, "process_index", lambda i=i: i)
        parts.append(np.arange(n)[parallel.process_slice(n)])
    for got, ref in zip(parts, np.array_split(np.arange(n), n_processes), strict=True):
        np.testing.assert_array_equal(got, ref)


def test_is_primary_and_to_host_on_one_process():
    assert parallel.is_primary()
    mesh = parallel.make_mesh(8)
    x = jax.device_put(np.arange(16.0), parallel.batch_sharding(mesh, 1))
    np.testing.assert_array_equal(parallel.to_host(x), np.arange(16.0))


def test_alone_makes_a_process_of_a_job_a_job_of_one(monkeypatch):
    """Process 1 of 2 (simulated): not primary, half the items, the global mesh; inside
    `alone()`: primary, every item, its own devices, no barrier; restored after."""
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    monkeypatch.setattr(jax, "local_devices", lambda: jax.devices()[:1])
    assert not parallel.is_primary() and parallel.process_slice(10) == slice(5, 10)
    assert parallel.make_mesh().size == len(jax.devices()) and parallel.owner(3) == 1
    with parallel.alone():
        assert parallel.is_primary() and parallel.is_alone() and parallel.process_count() == 1
        assert parallel.process_slice(10) == slice(0, 10) and parallel.make_mesh().size == 1
        assert parallel.owner(3) == 0 and parallel.broadcast_flags([True, False]) == [True, False]
        parallel.barrier("nobody else")  # returns at once
        assert parallel.share(lambda i: jax.numpy.arange(i), 3, "t")[2].tolist() == [0, 1]
    assert not parallel.is_primary() and not parallel.is_alone()


def test_share_on_one_process_is_each_item_in_order_on_the_host():
    out = parallel.share(lambda i: {"x": jax.numpy.full(2, i), "i": i}, 4, "items")
    assert [o["i"] for o in out] == [0, 1, 2, 3]
    assert all(isinstance(o["x"], np.ndarray) and o["x"].tolist() == [i, i]
               for i, o in enumerate(out))


def test_initialize_distributed_is_a_no_op_when_joined(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    parallel.initialize_distributed(coordinator_address="127.0.0.1:1")
    assert calls == []


def _data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    c = rng.beta(5, 2, n)
    y = (rng.random(n) < c).astype(np.float64)
    return c, y, rng.normal(size=n)


def _numpy_null(c, y, r, n_perm, n_bins, seed):
    """Independent reference: per permutation and bin, numpy's rng.permutation of the routing."""
    rng = np.random.default_rng(seed)
    out = np.empty(n_perm)
    for t in range(n_perm):
        rp = r.copy()
        b = np.clip(np.ceil(c * n_bins).astype(int) - 1, 0, n_bins - 1)
        for k in range(n_bins):
            idx = np.flatnonzero(b == k)
            rp[idx] = rng.permutation(r[idx])
        out[t] = diagnostics.subgroup_gaps(c, y, rp, n_bins=n_bins).weighted_gap
    return out


def test_null_is_the_same_for_every_strategy(monkeypatch):
    """CPU strategy (192 lanes, 16 examples a step), GPU/TPU strategy (8192 lanes, 128 a step) and
    other lane counts and device counts give the same null bit for bit for one key; and that null
    follows the permutation law (two-sample KS against numpy's permutations)."""
    c, y, r = _data(300, 4)
    kw = dict(key=jax.random.key(11), n_permutations=600, n_bins=5)
    cpu = diagnostics.within_bin_permutation_test(c, y, r, mesh=parallel.make_mesh(1), **kw)
    for lanes, devices in ((50, 8), (600, 1), (77, 3)):
        other = diagnostics.within_bin_permutation_test(
            c, y, r, mesh=parallel.make_mesh(devices), chunk_size=lanes, **kw
        )
        np.testing.assert_array_equal(other.null, cpu.null)
    monkeypatch.setitem(parallel._ENGINE_SIZES, "cpu", parallel.engine_sizes("gpu"))
    gpu = diagnostics.within_bin_permutation_test(c, y, r, mesh=parallel.make_mesh(2), **kw)
    np.testing.assert_array_equal(gpu.null, cpu.null)
    assert gpu.p_value == cpu.p_value
    ref = _numpy_null(c, y, r, 600, 5, seed=0)
    assert ks_2samp(gpu.null, ref).pvalue > 1e-3


def test_permutation_memory_is_set_by_configuration_not_by_b():
    """XLA's compiled temp memory: a fixed working set (layout O(N), one chunk of lanes) plus at
    most 64 bytes per permutation (its lane key, its null value), for any lane count."""
    n, mesh = 2000, parallel.make_mesh(1)
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        args = (
            jax.numpy.asarray(rng.integers(0, 15, n).astype(np.int32)),
            jax.numpy.asarray(rng.random(n)), jax.numpy.asarray((rng.random(n) < 0.5) * 1.0),
            jax.numpy.asarray(rng.normal(size=n)), jax.random.key(0),
        )

        def temp(b, lanes):
            lowered = diagnostics._sharded_test.lower(
                *args, n_permutations=b, n_bins=15, n_groups=3, chunk_size=lanes, mesh=mesh,
                block=16,
            )
            return lowered.compile().memory_analysis().temp_size_in_bytes

        base = temp(1024, 128)
        for lanes in (128, 1024):
            assert temp(32_768, lanes) <= base + 64 * 32_768


def test_release_compiled_frees_the_mappings_of_compiled_programs():
    """Each compiled program holds memory mappings until jax's caches drop it; past the limit
    `release_compiled` drops them (fewer mappings after), below it nothing happens."""
    import jax.numpy as jnp

    if parallel.memory_maps() is None:
        pytest.skip("no /proc/self/maps on this platform")
    for i in range(60):
        jax.jit(lambda x, i=i: jnp.cumsum(x) * i)(jnp.ones(i + 1)).block_until_ready()
    before = parallel.memory_maps()
    assert not parallel.release_compiled(max_maps=before + 10_000)
    assert parallel.release_compiled(max_maps=0)  # any process is past 0 mappings
    assert parallel.memory_maps() < before - 60  # ~3 mappings per program freed
