"""One study for every unit (see docs/ARCHITECTURE.md).

`plan` (the typed plan, validated whole), `run` (the driver: runs, analysis stages, results.json,
report), the units `example_unit` (digits) and `token_unit` (language models), `stages` (cache,
workdir guard, JSON I/O), `registry` and `grid` (the diagnostic tests), `diagnose` (bring your own
traces), `vmoer` (the VMoER section) with its sources `vmoer_sources` / `vmoer_imported`. Each stage reads predictions through
`routecal.files.predictions`.
"""
