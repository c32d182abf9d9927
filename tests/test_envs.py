"""envs/*.yaml (for --use-conda users) stay in step with pyproject.toml: each
env installs btpipe with the extra of its name, every rule names an existing
env, and every third-party library a stage imports is in that env."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# Rule group env -> the btpipe subpackages its scripts call into.
ENV_PACKAGES = {"demo": ["demo"], "ingest": ["ingest"], "preprocess": ["preprocess"],
                "segment": ["segment", "preprocess"], "radiomics": ["features"],
                "survival": ["survival"], "report": ["report"]}


def _pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _requirement_names(reqs) -> set[str]:
    names = set()
    for req in reqs:
        name = re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].strip().lower().replace("_", "-")
        names.add(name)
    return names


def _third_party_imports(package_dir: Path) -> set[str]:
    mods = set()
    for path in package_dir.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return {m for m in mods if m not in sys.stdlib_module_names and m != "btpipe"}


def test_every_env_installs_its_extra():
    extras = _pyproject()["optional-dependencies"]
    for env_file in sorted((REPO / "envs").glob("*.yaml")):
        env = yaml.safe_load(env_file.read_text())
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
        assert f"-e ..[{env_file.stem}]" in pip, env_file
        assert env_file.stem in extras, f"no [{env_file.stem}] extra in pyproject"
        assert f"btpipe[" in extras["all"][0] and env_file.stem in extras["all"][0]


def test_every_rule_names_an_existing_env():
    text = "\n".join(p.read_text() for p in (REPO / "workflow/rules").glob("*.smk"))
    named = set(re.findall(r'"\.\./\.\./envs/(\w+)\.yaml"', text))
    assert named == {p.stem for p in (REPO / "envs").glob("*.yaml")}
    rules = re.findall(r"^\s*(?:rule|checkpoint) (\w+):", text, re.M)
    targets = {"all", "ingest", "preprocess", "segment", "radiomics", "features", "survival"}
    with_script = [r for r in rules if r not in targets]
    assert text.count("conda:") == len(with_script)


@pytest.mark.parametrize("env", sorted(ENV_PACKAGES))
def test_stage_imports_are_in_its_env(env):
    project = _pyproject()
    allowed = _requirement_names(project["dependencies"]) | \
        _requirement_names(project["optional-dependencies"][env])
    dists = importlib.metadata.packages_distributions()
    missing = {}
    for sub in ENV_PACKAGES[env]:
        for module in _third_party_imports(REPO / "src/btpipe" / sub):
            names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
            if not names & allowed:
                missing[module] = sorted(names)
    assert not missing, f"env {env} lacks {missing}"
