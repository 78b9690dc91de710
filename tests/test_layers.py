"""The two layers, in the code and in the tests: the library (src/vaekit/*.py) never imports
the app (src/vaekit/app), and the tests of the library build what they need from the
library alone, so they test the library and not the app's way of using it."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from conftest import SRC

TESTS = Path(__file__).resolve().parent

# The test files of library modules. Test files of the library's behaviour reached through
# the app stay with the app: test_distributed.py (torchrun runs of `vaekit` commands;
# ddp_library.py also checks the app's data read on demand), test_resume.py (killed
# `vaekit train` processes, the app's resume policy), test_run_directories.py (run directories
# as the CLI writes and reads them), test_trackers.py (`--log`).
LIBRARY_TESTS = (
    "test_checkpoint.py", "test_evaluate.py", "test_init.py", "test_library.py", "test_likelihoods.py",
    "test_model.py", "test_model_variants.py", "test_objectives.py", "test_objectives_variants.py",
    "test_plots_variants.py", "test_sampling.py", "test_schedules.py", "test_priors.py", "test_posteriors.py",
    "test_gap_models.py", "test_protocol.py", "test_compile.py",
)
# What reaches the app from a test: the package's re-exports of app names, and conftest's
# helpers and fixtures that run the CLI or train through the app.
APP_NAMES = {"app", "Config", "build_model", "train", "resume", "load", "save", "load_data", "Dataset"}
APP_HELPERS = {"run_cli", "run_cli_subprocess", "tiny_run", "tiny_config", "trained"}


def test_the_library_never_imports_the_app():
    modules = sorted(f"vaekit.{p.stem}" for p in (SRC / "vaekit").glob("*.py") if p.stem != "__main__")
    assert "vaekit.training" in modules and "vaekit.plots" in modules
    code = (f"import sys, vaekit, {', '.join(modules)}\n"
            "print(sorted(m for m in sys.modules if m.startswith('vaekit.app')))")
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(SRC)),
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def _uses_of_the_app(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if a.name.startswith("vaekit.app")]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = {a.name for a in node.names}
            if module.startswith("vaekit.app") or (module == "vaekit" and names & APP_NAMES) \
                    or (module == "conftest" and names & APP_HELPERS):
                found.append(f"{where} from {module} import {', '.join(sorted(names))}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "vaekit" \
                and node.attr in APP_NAMES:
            found.append(f"{where} vaekit.{node.attr}")
        elif isinstance(node, ast.FunctionDef):
            arguments = {a.arg for a in node.args.args} & APP_HELPERS
            found += [f"{where} fixture {name}" for name in sorted(arguments)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                "vaekit.app" in node.value or "-m vaekit" in node.value):
            found.append(f"{where} code in a string reaches the app")
    return found


def test_library_tests_do_not_use_the_app():
    for name in LIBRARY_TESTS:
        assert (TESTS / name).is_file(), f"{name} is listed as a library test but does not exist"
    found = [use for name in LIBRARY_TESTS for use in _uses_of_the_app(TESTS / name)]
    assert found == [], "library tests reach the app (use conftest.make_vae, digits):\n" + "\n".join(found)


def test_the_check_sees_each_way_to_the_app(tmp_path):
    path = tmp_path / "test_sample.py"
    path.write_text(
        "import vaekit\nimport vaekit.app.runs\nfrom vaekit.app.config import Config\n"
        "from vaekit import VAE, load_data\nfrom conftest import make_vae, run_cli\n"
        "def test_a(tiny_run, digits):\n    vaekit.train(None)\n    vaekit.fit(None)\n"
        "CODE = 'import vaekit.app.cli'\n"
    )
    assert [use.split(" ", 1)[1] for use in _uses_of_the_app(path)] == [
        "import vaekit.app.runs", "from vaekit.app.config import Config", "from vaekit import VAE, load_data",
        "from conftest import make_vae, run_cli", "fixture tiny_run", "code in a string reaches the app",
        "vaekit.train",
    ]
