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
    """firmware_export's templates sit in subfolders; package-data must reach them all."""
    import tomllib

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    templates = list((ROOT / "firmware_export").rglob("*.tmpl"))
    assert templates and patterns["tinyq.firmware_export"] == ["**/*.tmpl"]
