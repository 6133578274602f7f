"""Pipelines that run stages over models and predictions: `study` (the main job), `vmoer` (the
VMoER experiment). Each stage reads predictions through `routecal.predictions`."""
