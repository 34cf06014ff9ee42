"""One module per model family; importing this package registers them all (see audit/targets/registry.py)."""
from audit.targets.families import flux, pixart, pixel, sd, sd3, sdxl  # noqa: F401
