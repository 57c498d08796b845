"""Importing the pipeline opens no network connection (offline machines print nothing, wait for nothing)."""
import ast
import subprocess
import sys

import pytest

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
import sys, src.augment, src.prepare, train, infer, ensemble, study
print("connections:", tried)
print("loaded:", sorted(m for m in ("matplotlib", "pydicom", "tifffile", "sklearn") if m in sys.modules))
"""


@pytest.fixture(scope="module")
def imported():
    """One interpreter that imports the pipeline (loading torch costs seconds of CPU): what it tried and loaded."""
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def test_importing_the_pipeline_opens_no_socket(imported):
    assert "connections: []" in imported.stdout and "Error fetching version info" not in imported.stderr


def test_planning_a_study_does_not_load_torch():
    """study.py plans and starts its runs before it needs torch (for infer and ensemble): a dry run stays quick."""
    probe = "import sys, study, src.study, src.engine; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_the_scripts_load_no_plotting_optional_image_library_or_splitter_until_used(imported):
    """Every train.py, infer.py and ensemble.py process (six of them per demo study) pays for what it imports; sklearn
    draws splits (src.split, --select-on inner) that these scripts never draw at start."""
    assert "loaded: []" in imported.stdout.splitlines()


def src_imports() -> dict:
    """Each module's project imports under src/ (its subpackages too), at any depth (a function's import closes a
    circle as surely); src/portable's relative imports (from .images import ...) as src.portable.images."""
    graph = {}
    for path in (ROOT / "src").rglob("*.py"):
        found, package = set(), ".".join(path.relative_to(ROOT).parent.parts)
        name = f"{package}.{path.stem}"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                found.update(f"{package}.{node.module}" if node.module else f"{package}.{a.name}" for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module == "src":
                found.update(f"src.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("src."):
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.startswith("src."))
        graph[name] = found - {name}
    return graph


def import_circle(graph: dict) -> list:
    """One circle as [a, b, ..., a], or [] when the imports form none (depth-first, three colours)."""
    state, trail = {}, []

    def visit(module):
        state[module], _ = "open", trail.append(module)
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "open":
                return trail[trail.index(imported):] + [imported]
            if imported not in state and (circle := visit(imported)):
                return circle
        state[module], _ = "done", trail.pop()
        return []

    for module in sorted(graph):
        if module not in state and (circle := visit(module)):
            return circle
    return []


def test_src_modules_import_no_circle():
    assert import_circle({"src.a": {"src.b"}, "src.b": {"src.a"}}) == ["src.a", "src.b", "src.a"]  # the check sees one
    circle = import_circle(src_imports())
    assert not circle, f"import circle among src/ modules: {' -> '.join(circle)}; move the shared piece into a lower module"


def test_atomic_writing_imports_nothing_of_the_project():
    assert src_imports()["src.portable.files"] == set()


def test_top_level_scripts_stay_short():
    """STYLE.md: a top-level script is a story of about 250 lines; past 300 a piece of it belongs in src/."""
    scripts = sorted(path for path in ROOT.glob("*.py") if path.name not in {"conftest.py", "setup.py"})
    long = {path.name: n for path in scripts if (n := len(path.read_text().splitlines())) > 300}
    assert not long, f"top-level scripts over 300 lines: {long}; move a coherent piece into src/"
