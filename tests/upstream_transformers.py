"""transformers' own common model tests, taken from the source distribution of the installed version.

The sdist of transformers X.Y.Z on the package registry carries `tests/test_modeling_common.py`,
`tests/test_configuration_common.py` and `tests/test_training_mixin.py` of exactly that release, so the
contract we test is the one the installed transformers keeps. It is fetched once with pip into a cache
folder (`HF_GPT_UPSTREAM_TESTS`, default `~/.cache/hf_gpt/transformers-tests`) and imported from there
as the package `upstream_transformers_tests`; nothing of it is committed here.

Three modules those files import are not in the sdist (they live only in transformers' repository):
`exporters/test_export.py`, `generation/test_utils.py` and `utils/test_configuration_utils.py`. They
are stood in for by empty mixins, so the tests they hold do not run (README's tests section lists them).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import transformers

PACKAGE = "upstream_transformers_tests"
FILES = ("test_modeling_common.py", "test_configuration_common.py", "test_training_mixin.py")
NOT_IN_SDIST = {
    "exporters.test_export": {"ExportTesterMixin": type("ExportTesterMixin", (), {})},
    "generation.test_utils": {"GenerationTesterMixin": type("GenerationTesterMixin", (), {})},
    "utils.test_configuration_utils": {"config_common_kwargs": None},
}


class Unavailable(RuntimeError):
    """The upstream tests of this transformers version cannot be had; the message says why."""


def cache_root() -> Path:
    default = Path.home() / ".cache" / "hf_gpt" / "transformers-tests"
    return Path(os.environ.get("HF_GPT_UPSTREAM_TESTS", default))


def fetch_tests(version: str) -> Path:
    """The folder holding FILES for transformers `version`, downloaded and unpacked on first use."""
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise Unavailable(f"transformers {version} is not a release: no sdist of its tests on the registry")
    target = cache_root() / version / PACKAGE
    if all((target / name).is_file() for name in FILES):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as staging:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps"]
        command += ["--no-binary", ":all:", "--dest", staging, f"transformers=={version}"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        archives = list(Path(staging).glob("transformers-*.tar.gz"))
        if done.returncode or not archives:
            raise Unavailable(f"pip could not download the transformers {version} sdist: {done.stderr.strip()[-300:]}")
        unpacked = Path(staging) / PACKAGE
        unpacked.mkdir()
        with tarfile.open(archives[0]) as archive:
            for name in FILES:
                member = archive.getmember(f"transformers-{version}/tests/{name}")
                (unpacked / name).write_bytes(archive.extractfile(member).read())
        (unpacked / "__init__.py").write_text(f'"""tests/ of the transformers {version} sdist."""\n')
        try:
            unpacked.rename(target)  # atomic: a run killed before this leaves no half folder behind
        except OSError:  # another run got there first
            if not target.is_dir():
                raise
            shutil.rmtree(unpacked)
    return target


def load(module: str) -> types.ModuleType:
    """Import `module` (e.g. "test_modeling_common") from the installed transformers' own tests."""
    folder = fetch_tests(transformers.__version__)
    if str(folder.parent) not in sys.path:
        sys.path.insert(0, str(folder.parent))
    for name, attributes in NOT_IN_SDIST.items():
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            qualified = ".".join([PACKAGE, *parts[:depth]])
            stand_in = sys.modules.setdefault(qualified, types.ModuleType(qualified))
            if depth < len(parts):
                stand_in.__path__ = []  # a package, so the leaf below it imports
        vars(sys.modules[f"{PACKAGE}.{name}"]).update(attributes)
    __import__(f"{PACKAGE}.{module}")
    return sys.modules[f"{PACKAGE}.{module}"]
