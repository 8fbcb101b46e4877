"""Settings of the `codelm scaling` commands: the only home of their defaults, which the CLI shows.

Kept apart from the stages, with no heavy imports, so that the CLI builds its parser without importing torch.
"""

from pathlib import Path

TRAINING_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tiny.toml"  # the speedrun's settings
