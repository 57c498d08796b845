import os

# albumentations asks PyPI for its newest version on import: offline, every run waits and prints "Error fetching
# version info". Set before any src module imports it; a value the user set is kept.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
