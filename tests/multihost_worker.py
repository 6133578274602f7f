"""One process of a local multi-process job (started by tests/test_multihost.py).

    python tests/multihost_worker.py PORT N_PROCESSES PROCESS_ID OUT_DIR DATA_DIR TASKS

TASKS is a comma-separated subset of perm,nw,train,predict (predict needs train).

Joins the job over 127.0.0.1 (CPU collectives through gloo, 2 fake CPU devices per process), then
runs on a mesh spanning every process: the within-bin permutation test, the NW leave-one-out
bandwidth sweep, 20 steps of data-parallel training and predict writing one shard per process.
Each process saves what it computed to OUT_DIR/<task>-<process>.npz; the test compares them with
one process. The inputs come from `multihost_cases` below, shared with the test.
"""

from __future__ import annotations

import os
import sys
import time

DEVICES_PER_PROCESS = 2


def perm_case():
    import numpy as np

    rng = np.random.default_rng(0)
    c = rng.beta(5, 2, 600)
    y = (rng.random(600) < c).astype(np.float64)
    r = rng.normal(size=600) + 0.5 * y
    return (c, y, r), dict(n_permutations=500, n_bins=10)


def nw_case():
    import numpy as np

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 2))
    y = (rng.random(300) < 1 / (1 + np.exp(-2 * x[:, 0]))).astype(np.float64)
    return x, y, np.geomspace(0.25, 4.0, 6)


def train_config(data_dir: str):
    import pathlib

    from routecal.config import load_config

    configs = pathlib.Path(__file__).resolve().parents[1] / "configs"
    if str(configs) not in sys.path:  # the configs import their sibling `common`
        sys.path.insert(0, str(configs))
    return load_config(f"{configs / 'attnres_digits.py'}:standard,tiny", [
        f"data.data_dir={data_dir}", "train.steps=20", "train.batch_size=16",
        "train.checkpoint_every=20", "train.eval_every=20", "train.log_every=5",
    ])


def flat_params(model) -> dict:
    """{"a/b/kernel": array} of an NNX model's parameters."""
    import numpy as np
    from flax import nnx

    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {"/".join(map(str, k)): np.asarray(v[...]) for k, v in flat}


def main() -> None:
    t0 = time.perf_counter()
    port, n, i, out_dir, data_dir, tasks = sys.argv[1:7]
    tasks = tasks.split(",")
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    from routecal import parallel

    parallel.initialize_distributed(
        coordinator_address=f"127.0.0.1:{port}", num_processes=int(n), process_id=int(i),
        initialization_timeout=120,
    )
    import jax
    import numpy as np

    from routecal.stats import diagnostics, kernels
    from routecal.training import predict, train

    assert jax.process_count() == int(n) and jax.device_count() == int(n) * DEVICES_PER_PROCESS
    mesh = parallel.make_mesh()  # every device of every process

    def save(task, **arrs):
        np.savez(os.path.join(out_dir, f"{task}-{i}.npz"), **arrs)
        print(f"process {i}: {task} done at {time.perf_counter() - t0:.1f} s wall, "
              f"{time.process_time():.1f} s CPU", file=sys.stderr, flush=True)

    if "perm" in tasks:
        (c, y, r), kw = perm_case()
        res = diagnostics.within_bin_permutation_test(
            c, y, r, key=jax.random.key(3), mesh=mesh, **kw
        )
        sharded = jax.device_put(np.arange(4.0 * mesh.size), parallel.batch_sharding(mesh, 1))
        save("perm", statistic=res.statistic, p_value=res.p_value, null=res.null,
             gathered=parallel.to_host(sharded))
    if "nw" in tasks:
        x, yb, mult = nw_case()
        nll = kernels.loo_nll(x, yb, kernels.scott_multiples(x, mult), mesh=mesh, row_tile=16)
        save("nw", nll=nll)
    workdir = os.path.join(out_dir, "train")
    if "train" in tasks:
        final = train.train_and_evaluate(train_config(data_dir), workdir, mesh=mesh)
        save("train", loss=final["train/loss"], **flat_params(train.load_trained(workdir)[0]))
    if "predict" in tasks:
        predict.predict_process_shard(workdir, "test", batch_size=64)
        save("predict")
    jax.experimental.multihost_utils.sync_global_devices("done")


if __name__ == "__main__":
    main()
