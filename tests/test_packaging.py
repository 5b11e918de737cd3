"""Every subpackage of tinyq/ is installed: pyproject.toml lists packages explicitly."""
import tomllib

from conftest import ROOT


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "tinyq").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert f"```\n{command}\n```" in readme


def test_every_template_is_installed():
    """firmware_export's templates and board files sit in subfolders; package-data must reach them all."""
    import tomllib

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    folder = ROOT / "firmware_export"
    files = {p for p in folder.rglob("*") if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts}
    installed = {p for pattern in patterns["tinyq.firmware_export"] for p in folder.glob(pattern)}
    assert files and any(p.suffix == ".tmpl" for p in files) and any(p.suffix == ".ld" for p in files)
    assert files <= installed, f"add patterns for {sorted(str(p.relative_to(folder)) for p in files - installed)}"
