"""Importing the pipeline opens no network connection (offline machines print nothing, wait for nothing)."""
import subprocess
import sys

from conftest import ROOT

PROBE = """
import os, socket
os.environ.pop("NO_ALBUMENTATIONS_UPDATE", None)  # the project must set it itself
tried = []
def refuse(self, address, *args):
    tried.append(address)
    raise OSError("no network in this test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
import src.augment, src.prepare, train, infer, ensemble
print("connections:", tried)
"""


def test_importing_the_pipeline_opens_no_socket():
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "connections: []" in done.stdout and "Error fetching version info" not in done.stderr


def test_planning_a_study_does_not_load_torch():
    """study.py plans and starts its runs before it needs torch (for infer and ensemble): a dry run stays quick."""
    probe = "import sys, study, src.study, src.engine; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_the_scripts_load_no_plotting_or_optional_image_library_until_used():
    """Every train.py, infer.py and ensemble.py process (six of them per demo study) pays for what it imports."""
    probe = ("import sys, train, infer, ensemble, study; "
             "print(sorted(m for m in ('matplotlib', 'pydicom', 'tifffile') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
