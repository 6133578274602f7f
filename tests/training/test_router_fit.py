"""`training.router_fit`: the retrofit recipes every VMoER source shares (fake sources here: the
recipes' bookkeeping; the fits themselves run in tests/study/test_vmoer_*.py and the
imported-checkpoint smoke test)."""

import numpy as np
import pytest

from routecal.models.routers import baselines
from routecal.training import router_fit


@pytest.mark.parametrize("optimum, edge", [(-7.0, "lowest"), (-3.2, None), (0.5, "highest")])
def test_choose_beta_keeps_the_lowest_calib_nll_and_flags_a_grid_edge(optimum, edge):
    grid = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    nll = {b: (np.log10(b) - optimum) ** 2 for b in grid}  # a bowl in log10(beta)
    fitted, rec = router_fit.choose_beta(grid, lambda b: (nll[b], f"model@{b:g}"))
    want = min(grid, key=lambda b: abs(np.log10(b) - optimum))  # the grid value nearest
    assert rec["beta"] == want and fitted == f"model@{want:g}"
    assert rec["beta_calib_nll"] == [nll[b] for b in grid]
    assert rec["beta_at_edge"] == edge
    assert bool(rec["warnings"]) == (edge is not None)
    if edge:
        assert f"{edge} value" in rec["warnings"][0]
        assert ("below" if edge == "lowest" else "above") in rec["warnings"][0]
    with pytest.raises(ValueError, match="experiment.beta_grid"):
        router_fit.choose_beta([], lambda b: (0.0, None))
    assert router_fit.beta_edge([1e-2], 1e-2) is None  # one value: nothing was chosen




class _Fake:
    """A source whose "models" are dicts: copy records the options, fit the stream."""

    def __init__(self):
        self.fits = []

    def copy(self, router, options):
        return {"router": router, **options}

    def fit(self, model, trainable, stream, **kw):
        self.fits.append((model["router"], trainable, stream))
        return [1.0, 0.5]


@pytest.mark.parametrize("router, trainable", [("mc_dropout", r"router/proj"),
                                               ("fixed_temp", None)])
def test_plain_retrofit_fits_the_routers_selection_or_nothing(router, trainable):
    src = _Fake()
    model, log = router_fit.retrofit(router, 0, src.copy, src.fit, n_members=2, perturb=0.0,
                                     rule=baselines.Plateau(1, 1, 1), swag_steps=1,
                                     beta_grid=(0.1, 0.2))  # no beta: the grid is ignored
    assert model == {"router": router}
    assert src.fits == ([(router, trainable, None)] if trainable else [])
    assert log == {"losses": [1.0, 0.5] if trainable else []}


def test_beta_retrofit_keeps_the_lowest_calib_nll_one_fit_stream_per_beta():
    src = _Fake()
    nll = {1e-3: 0.7, 1e-2: 0.4, 1e-1: 0.9}
    model, log = router_fit.retrofit("mfvr", 0, src.copy, src.fit, n_members=2, perturb=0.0,
                                     rule=baselines.Plateau(1, 1, 1), swag_steps=1,
                                     beta_grid=tuple(nll), calib_nll=lambda m: nll[m["beta"]])
    assert model == {"router": "mfvr", "beta": 1e-2} and log["beta"] == 1e-2
    assert log["beta_calib_nll"] == list(nll.values()) and log["beta_at_edge"] is None
    assert [s for _, _, s in src.fits] == ["beta0.001", "beta0.01", "beta0.1"]
    with pytest.raises(ValueError, match="calib split"):
        router_fit.retrofit("vtsr", 0, src.copy, src.fit, n_members=2, perturb=0.0,
                            rule=baselines.Plateau(1, 1, 1), swag_steps=1, beta_grid=(0.1,))


def test_ensemble_options_read_the_vmoer_options_their_defaults_and_the_plateau_section():
    import ml_collections

    from routecal.models.routers import common

    plateau = ml_collections.ConfigDict({"member_steps": 7, "member_max_steps": 21})
    opts = router_fit.ensemble_options({"ensemble": 3}, plateau, steps=5)
    assert opts["n_members"] == 3  # given
    assert opts["perturb"] == common.DEFAULTS["vmoer_ensemble_perturb"]  # the default
    assert (opts["rule"].min_steps, opts["rule"].max_steps) == (7, 21)
    bare = router_fit.ensemble_options({}, ml_collections.ConfigDict(), steps=5)
    assert bare["n_members"] == common.DEFAULTS["vmoer_ensemble"]
    assert (bare["rule"].min_steps, bare["rule"].max_steps) == (5, 5)  # a fixed length
    # batch-order seeds: member m at seed s -> s * 1000 + 100 + m; the router's own fit -> s + 2
    assert [router_fit.stream_seed(2, x) for x in (0, 3, None, "beta0.1")] == [2100, 2103, 4, 4]
