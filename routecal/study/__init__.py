"""One study for every source and unit (see docs/ARCHITECTURE.md).

`plan` (the one typed Plan: source x unit x domains x sections, validated whole), `run` (the driver:
runs, sections, the one call into the VMoER section, results.json, report), the unit adapters
`example_unit` and `token_unit` (+ `token_stages`, `temperature`), `registry` and `grid` (the
tests), `stages` (cache, workdir guard, JSON I/O), `diagnose` (bring your own traces), `vmoer` (the
VMoER section for every MoE source; the sources, how each MoE trains, fits and scores a router,
are training code: `training.vmoer_sources` / `training.vmoer_imported`).
"""
