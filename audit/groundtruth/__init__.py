"""Ground truth: everything that *builds* models with a known training split.

Nothing here is the model under audit (that is :mod:`audit.targets`). This package renders the synthetic
"artists" (:mod:`.synthetic`), reads public data sources (:mod:`.sources`), builds and trains tiny models of
every family (:mod:`.ddpm` pixel DDPMs, :mod:`.sd` the Stable Diffusion 1.x layout, :mod:`.families` the
SDXL / SD3 / Flux / PixArt layouts; :mod:`.single_file` writes them as original-layout single-file
checkpoints), trains the benchmark targets (:mod:`.train`) and the demo
(:mod:`.demo`). Tests, scripts and the demo all build their models through these modules.
"""
