"""Pipelines that run stages over models and predictions (see docs/ARCHITECTURE.md).

`stages` (cache, workdir guard, JSON I/O), `plan` (the study's typed Plan), `grid` (the diagnostic
tests), `run` (the main job), `diagnose` (bring your own traces), `vmoer` (the VMoER experiment).
Each stage reads predictions through `routecal.files.predictions`.
"""
