"""Segment a folder of images with the ensemble in this folder and write its submission (export.py copies this file
into each package as predict.py; it is not imported in the project).

  python -I predict.py --images /kaggle/input/competition/test --out submission.csv [--masks-dir DIR]
                       [--device cpu|cuda] [--batch-size B]
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # python -I leaves the script's own folder off sys.path: portable/ is beside it

try:
    from portable.package import main
except ImportError as error:  # a package copied without portable/, or without a library of requirements.txt
    sys.exit(f"predict: {HERE}: cannot start ({error}); copy the whole package, and pip install -r requirements.txt")

if __name__ == "__main__":
    main(folder=HERE)
