import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "lib"))

from moeparity import fixtures  # noqa: E402


@pytest.fixture(scope="session")
def fixture_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fixtures")


@pytest.fixture(scope="session")
def build(fixture_dir):
    """build(preset, **kw) → path; each distinct fixture is built once per session."""
    cache = {}

    def _build(preset="tiny", **kw):
        key = (preset, tuple(sorted(kw.items())))
        if key not in cache:
            name = preset + "".join(f"-{k}{v}" for k, v in sorted(kw.items())).replace(":", "_")
            cache[key] = fixtures.build(str(fixture_dir / f"{name}.gguf"), preset, **kw)
        return cache[key]
    return _build


@pytest.fixture(scope="session")
def tiny(build):
    return build("tiny")


@pytest.fixture
def rng(request):
    """Fresh seed per test (printed on failure through the test id), never all-zeros inputs."""
    seed = int.from_bytes(os.urandom(4), "little")
    request.node.user_properties.append(("seed", seed))
    print(f"seed={seed}")
    return np.random.default_rng(seed)
