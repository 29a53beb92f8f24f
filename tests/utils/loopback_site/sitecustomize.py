"""Guards every Python process that the tests start: tests/conftest.py puts this folder first on
their PYTHONPATH, so the interpreter imports this file at start-up, and it installs the guard of
../loopback.py (loaded by its path: the project is not necessarily importable from here), which
reports to the file named by ORDERGRAPH_TEST_CONNECT_LOG.

Nothing here may stop an interpreter from starting: a failure is one line on stderr. The
sitecustomize that this one hides further along sys.path, if any, still runs.
"""

import importlib.machinery
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_SHARED_NAME = "_ordergraph_loopback_guard"  # loopback.SHARED_NAME


def _install_guard() -> None:
    module = sys.modules.get(_SHARED_NAME)
    if module is None:
        path = os.path.join(os.path.dirname(_HERE), "loopback.py")
        spec = importlib.util.spec_from_file_location(_SHARED_NAME, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[_SHARED_NAME] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[_SHARED_NAME]
            raise
    module.install()


def _run_hidden_sitecustomize() -> None:
    rest = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


for _step, _failure in (
    (_install_guard, "the tests' loopback guard is not installed"),
    (_run_hidden_sitecustomize, "the sitecustomize further along sys.path failed"),
):
    try:
        _step()
    except Exception as exc:
        print(f"{__file__}: {_failure}: {exc!r}", file=sys.stderr)
