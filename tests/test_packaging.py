"""environment.yml and pyproject.toml name the same dependencies."""
import os
import re
import tomllib

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _name(req):
    return re.split(r"[<>=!~\[ ]", req.strip(), 1)[0].lower().replace("_", "-")


def test_environment_matches_pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        proj = tomllib.load(f)["project"]
    want = {_name(r) for r in proj["dependencies"]}
    for extra in ("notebooks", "test"):
        want |= {_name(r) for r in proj["optional-dependencies"][extra]}
    env = yaml.safe_load(open(os.path.join(ROOT, "environment.yml")))
    have = set()
    for d in env["dependencies"]:
        if isinstance(d, dict):
            have |= {_name(r) for r in d["pip"] if not r.startswith("-")}
        else:
            have.add(_name(d))
    have -= {"python", "pip"}
    assert want == have, f"only in pyproject: {want - have}; only in environment.yml: {have - want}"
