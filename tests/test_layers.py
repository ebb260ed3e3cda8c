"""The layering contracts of pyproject.toml hold for the package, and planted violations fail lint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "airflow_provider_servicetitan"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def contract_names() -> dict[str, str]:
    """Contract id -> name, as configured in pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {contract["id"]: contract["name"] for contract in config["tool"]["importlinter"]["contracts"]}


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """Run lint-imports with the project's contracts on the package found in ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(tree / "pyproject.toml")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def plant(module: Path, line: str) -> None:
    module.write_text(f"{module.read_text()}\n{line}\n")


def test_the_package_keeps_every_contract() -> None:
    result = lint_imports(ROOT)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(contract_names())} kept, 0 broken." in result.stdout


def test_planted_violations_fail_lint(tmp_path: Path) -> None:
    shutil.copytree(ROOT / PACKAGE, tmp_path / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    plant(tmp_path / PACKAGE / "catalog.py", "import airflow  # noqa")
    plant(tmp_path / PACKAGE / "sandbox" / "api.py", f"from {PACKAGE}.client import client  # noqa")
    plant(tmp_path / PACKAGE / "storage" / "records.py", f"from {PACKAGE}.sync import engine  # noqa")

    result = lint_imports(tmp_path)

    names = contract_names()
    report = " ".join(result.stdout.split())  # the report wraps long lines
    assert result.returncode != 0
    assert f"{names['core-without-airflow']} BROKEN" in report
    assert f"{names['sandbox-mirrors-only']} BROKEN" in report
    assert f"{names['layers']} BROKEN" in report
    assert "Contracts: 0 kept, 3 broken." in report
    assert f"{PACKAGE}.catalog -> airflow" in report
    assert f"{PACKAGE}.sandbox.api -> {PACKAGE}.client.client" in report
    assert f"{PACKAGE}.storage.records -> {PACKAGE}.sync.engine" in report
