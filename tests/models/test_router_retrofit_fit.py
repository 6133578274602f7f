"""The retrofit pieces the LM study, the digits study and imported checkpoints share:
`routers.baselines.fit_members` / `install_members` (deep-ensemble members fitted alone) and
`routers.swag.collect_from` (SWAG moments over a fitting loop)."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from scipy import stats

from routecal.models import moe, routers, vmoer
from routecal.models.routers import baselines, swag

CFG = dict(d_model=4, mlp_dim=8, n_experts=3, top_k=2, vmoer_ensemble=3, vmoer_swag_rank=3,
           vmoer_samples=4, vmoer_swag_start=0.5)
X = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 4)), jnp.float32)


def _layer(name: str, seed: int = 0) -> moe.MoEMLP:
    cfg = vmoer.VMoERConfig(**CFG)
    return moe.MoEMLP(cfg, router=routers.make(cfg, name, rngs=nnx.Rngs(seed)),
                      rngs=nnx.Rngs(seed + 1))


PROJ = nnx.PathContains("proj")


@nnx.jit
def _step(model, opt, target):
    def loss(m):
        y, aux, _ = m(X, train=True)
        return jnp.mean(jnp.square(y - target)) + sum(aux.values())

    value, grads = nnx.value_and_grad(loss, argnums=nnx.DiffState(0, PROJ))(model)
    opt.update(model, grads)
    return value


def _sgd(model: moe.MoEMLP, steps: int, target: float, on_step=None) -> list[float]:
    """`steps` SGD steps of `router/proj` on a toy regression; returns the losses."""
    opt = nnx.Optimizer(model, optax.sgd(0.5), wrt=PROJ)
    losses = []
    for i in range(steps):
        losses.append(float(_step(model, opt, jnp.float32(target))))
        if on_step is not None:
            on_step(i)
    return losses


def test_members_are_fitted_alone_from_perturbed_det_and_installed():
    det = _layer("det")
    w_det = np.asarray(det.router.proj.kernel[...], np.float64)
    starts, seen = [], []

    def make_member():
        return nnx.clone(det)

    def fit_member(member, m, rule):
        starts.append(np.asarray(member.router.proj.kernel[...], np.float64))
        seen.append(id(member))
        return _sgd(member, 4 + m, target=1.0 + m)  # its own objective's run, own length

    rule = baselines.Plateau(4, 6, 1)
    kernels, logs = baselines.fit_members(make_member, fit_member, 3, 0.1, seed=7, rule=rule)
    assert len(set(seen)) == 3  # a fresh model per member: fitted alone
    for m in range(3):  # start = det + N(0, 0.1^2) from numpy seed (7, m)
        want = w_det + 0.1 * np.random.default_rng([7, m]).standard_normal(w_det.shape)
        np.testing.assert_allclose(starts[m], want, rtol=1e-5, atol=1e-6)
        assert logs[m]["seed"] == [7, m] and logs[m]["steps"] == 4 + m
        assert len(logs[m]["losses"]) == 4 + m and np.all(np.isfinite(logs[m]["losses"]))
        assert logs[m]["final_loss"] == pytest.approx(np.mean(logs[m]["losses"][-10:]))
        assert not np.allclose(np.asarray(kernels[m][0]), starts[m])  # it trained
    assert np.abs(np.asarray(kernels[0][0]) - np.asarray(kernels[1][0])).max() > 1e-3

    ens = _layer("ensemble")
    baselines.install_members(ens, kernels)
    u = np.asarray(X, np.float64)
    got = np.asarray(ens.router.member_logits(X), np.float64)  # [M, B, T, E]
    for m in range(3):  # numpy reference: member m's logits are u @ W_m
        np.testing.assert_allclose(got[m], u @ np.asarray(kernels[m][0]), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="kernels"):
        baselines.install_members(ens, kernels[:2])
    with pytest.raises(ValueError, match="ensemble router"):
        baselines.install_members(det, kernels)
    with pytest.raises(ValueError, match="vmoer_ensemble"):
        baselines.fit_members(make_member, fit_member, 1, 0.1, seed=0, rule=rule)


def _reference_stop(losses, min_steps, max_steps, check_every, tol=0.02, z=2.0):
    """Where the plateau rule stops a fit whose full-length loss curve is `losses`: the first
    check n = min_steps, min_steps + check_every, ... at which the mean of the last
    w = max(floor(n / 10), 1) losses improves on the w before by at most tol |prev| plus z
    standard errors (the residual sd of scipy's straight-line fit to the 2w losses); else
    max_steps."""
    for n in range(min_steps, max_steps + 1, check_every):
        w = max(n // 10, 1)
        x = np.asarray(losses[n - 2 * w : n], np.float64)
        prev, last = x[:w].mean(), x[w:].mean()
        fit = stats.linregress(np.arange(2 * w), x) if 2 * w > 2 else None
        s = 0.0 if fit is None else np.sqrt(
            np.sum((x - fit.intercept - fit.slope * np.arange(2 * w)) ** 2) / (2 * w - 2))
        if 2 * w <= n and prev - last <= tol * abs(prev) + z * s * np.sqrt(2 / w):
            return n
    return max_steps


def test_plateau_rule_level_under_batch_noise_and_power_on_a_real_trend():
    """Flat curves with per-step noise sd 0.14 (the LM members' measured batch noise): the rule
    calls 'still improving' at about the one-sided 2.3% level of z = 2 (the relative-change
    rule alone, z = 0, mostly does); a curve falling 0.16 per 20 steps (sd 0.14 per step) is not a plateau."""
    rng = np.random.default_rng(0)
    n, reps = 200, 400
    flat = 1.0 + 0.14 * rng.standard_normal((reps, n))
    improving = [not baselines.converged(list(c)) for c in flat]
    assert all(type(baselines.converged(list(c))) is bool for c in flat[:3])  # JSON-ready
    hi = stats.binomtest(sum(improving), reps).proportion_ci(0.99).high
    assert sum(improving) / reps <= 0.05 and hi < 0.07
    plain = np.mean([not baselines.converged(list(c), z=0.0) for c in flat])
    assert plain > 0.2  # what the noise-blind rule did: members kept training on noise
    falling = 2.0 - 0.008 * np.arange(n) + 0.14 * rng.standard_normal((reps, n))
    power = np.mean([not baselines.converged(list(c)) for c in falling])
    assert power >= 0.8
    with pytest.raises(ValueError, match="NaN or inf"):
        baselines.converged([1.0] * 19 + [float("nan")])
    with pytest.raises(ValueError, match="train.member_plateau_z"):
        baselines.Plateau(10, 100, 5, z=-1.0)


def test_members_stop_only_when_the_plateau_rule_holds():
    det = _layer("det")
    target = {0: 1.0, 1: 2.0, 2: 0.5}
    full = {}  # member m's loss curve over max_steps steps from the same start, no stopping
    for m in range(3):
        member = nnx.clone(det)
        baselines.perturb_routers(member, 0.1, np.random.default_rng([3, m]))
        full[m] = _sgd(member, 120, target[m])

    def fit_member(member, m, rule):
        losses = []
        opt = nnx.Optimizer(member, optax.sgd(0.5), wrt=PROJ)
        for _ in range(rule.max_steps):
            losses.append(float(_step(member, opt, jnp.float32(target[m]))))
            if rule.stop(losses):
                break
        return losses

    rule = baselines.Plateau(min_steps=10, max_steps=120, check_every=5)
    _, logs = baselines.fit_members(lambda: nnx.clone(det), fit_member, 3, 0.1, seed=3, rule=rule)
    stopped_early = 0
    for m, log in enumerate(logs):
        want = _reference_stop(full[m], 10, 120, 5)
        assert log["steps"] == want and log["max_steps"] == 120
        np.testing.assert_allclose(log["losses"], full[m][:want], rtol=1e-6)
        assert log["converged"] == (want < 120 or baselines.converged(full[m]))
        stopped_early += want < 120
    assert stopped_early >= 1  # the rule did stop some member before the cap
    # no tolerance and no noise allowance: a member stops only once its loss stops falling;
    # a member still falling at the cap is flagged not converged
    strict = baselines.Plateau(10, 40, 5, tol=0.0, z=0.0)
    _, logs = baselines.fit_members(lambda: nnx.clone(det), fit_member, 2, 0.1, seed=3,
                                    rule=strict)
    for m, log in enumerate(logs):
        assert log["steps"] == _reference_stop(full[m], 10, 40, 5, tol=0.0, z=0.0)
    capped = [lg for lg in logs if lg["steps"] == 40]
    assert capped and not any(lg["converged"] for lg in capped)


def test_plateau_rule_rejects_bad_settings_naming_the_key():
    with pytest.raises(ValueError, match="train.member_max_steps"):
        baselines.Plateau(200, 100, 50)
    with pytest.raises(ValueError, match="train.member_steps"):
        baselines.Plateau(0, 100, 50)
    with pytest.raises(ValueError, match="train.member_check_every"):
        baselines.Plateau(10, 100, 0)
    cfg = {"member_steps": 7}
    assert baselines.Plateau.from_config(cfg, 3) == baselines.Plateau(7, 7, 50)  # fixed length
    assert baselines.Plateau.from_config({}, 3) == baselines.Plateau(3, 3, 50)


def test_scratch_members_start_at_the_routers_initialiser():
    det = _layer("det")
    starts = []

    def fit_member(member, m, rule):
        starts.append(np.asarray(member.router.proj.kernel[...], np.float64))
        return _sgd(member, 3, target=1.0)

    baselines.fit_members(lambda: baselines.reset_routers(nnx.clone(det)), fit_member, 2,
                          baselines.ROUTER_INIT_STD, seed=5, rule=baselines.Plateau(3, 3, 1))
    shape = starts[0].shape
    for m in range(2):  # N(0, 0.02^2) from numpy seed (5, m): no trace of det's router
        want = 0.02 * np.random.default_rng([5, m]).standard_normal(shape)
        np.testing.assert_allclose(starts[m], want, rtol=1e-5, atol=1e-7)


def test_converged_flags_a_plateau_only():
    assert baselines.converged([5.0] * 10 + [1.0] * 20)
    assert not baselines.converged(list(np.linspace(5.0, 1.0, 30)))
    assert not baselines.converged([1.0])


def test_collect_from_starts_at_swag_start_and_makes_swag_differ_from_det():
    layer = _layer("swag")
    det = moe.TopKRouter(vmoer.VMoERConfig(**CFG), rngs=nnx.Rngs(0))
    det.proj.kernel[...] = layer.router.proj.kernel[...]
    # before moments the SWAG router is the deterministic one
    np.testing.assert_allclose(layer.router(X).probs_BxTxE, det(X).probs_BxTxE, rtol=1e-6)
    collector = swag.collect_from(layer, 8)
    with pytest.raises(ValueError, match="no iterate"):
        collector.install()  # nothing collected yet: it would act as det
    traj = []
    _sgd(layer, 8, 1.0, on_step=lambda i: (collector.hook(i),
                                            traj.append(np.asarray(layer.router.proj.kernel[...]))))
    assert collector.states[0].n == 4  # steps 4..7 of 8 (vmoer_swag_start 0.5)
    np.testing.assert_allclose(collector.states[0].mean, np.mean(traj[4:], 0), rtol=1e-5)
    collector.install()
    det.proj.kernel[...] = layer.router.proj.kernel[...]  # the last iterate
    out = layer.router(X)
    assert float(jnp.min(out.trace["router_logit_var"])) > 0
    assert np.abs(np.asarray(out.probs_BxTxE) - np.asarray(det(X).probs_BxTxE)).max() > 1e-4
