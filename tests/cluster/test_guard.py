"""The replicas refuse to start when a Ray working_dir shadows the project's plain-named packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from service.cluster.guard import ROOT, shadowed_packages

CHECK = "from service.cluster.guard import check_packages; check_packages()"


def test_the_installed_packages_are_not_shadowed():
    assert shadowed_packages() == {}


def test_a_users_models_package_first_on_the_path_is_refused(tmp_path: Path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("")
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}"}  # as Ray puts a working_dir first on sys.path
    run = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode != 0
    assert "the blockdrop packages are shadowed (models from" in run.stderr
    assert "working_dir" in run.stderr
