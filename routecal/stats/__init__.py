"""Statistics: pure functions of arrays (no I/O, no models).

`calibration` (ECE and friends, the one binning), `diagnostics` (the matched-confidence tests),
`kernels` (Nadaraya-Watson and bandwidths), `simulation` (null and planted-effect generators),
`uncertainty` (entropy, MI, OOD AUROC, routing stability), `seeds` (seed bands and the one verdict
rule). See docs/ARCHITECTURE.md.
"""
