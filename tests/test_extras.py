"""Optional extras: without `serve` or `onnx`, the command that needs one fails with one line
naming the pip command; the core (the torch back end) imports and runs without them."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from sonocad.cli import main
from sonocad.errors import SonocadError
from sonocad.extras import EXTRAS, MissingExtraError, require

SERVE_MESSAGE = 'sonocad serve needs the serve extra: pip install "sonocad[serve]"'
ONNX_MESSAGE = ('ONNX (sonocad export, the onnx back end) needs the onnx extra: '
                'pip install "sonocad[onnx]"')


def _hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make `import module` fail as if it were not installed (None in sys.modules), and forget
    sonocad's modules that import it, so that they import afresh."""
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)
    for name in list(sys.modules):
        if name == "sonocad.serve" or name.startswith("sonocad.serve."):
            monkeypatch.delitem(sys.modules, name)


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    return err.rstrip("\n")


@pytest.mark.parametrize("module", EXTRAS["serve"][1])
def test_serve_without_its_extra_is_one_line(monkeypatch, module):
    _hide(monkeypatch, module)
    with pytest.raises(MissingExtraError) as caught:
        importlib.import_module("sonocad.serve")
    assert str(caught.value) == f"{SERVE_MESSAGE} ({module} is not installed)"
    assert isinstance(caught.value, SonocadError)


def test_serve_command_without_fastapi(monkeypatch, capsys):
    _hide(monkeypatch, "fastapi")
    assert main(["serve", "--port", "0"]) == 2
    assert _one_error_line(capsys) == (f"sonocad: error: {SERVE_MESSAGE} "
                                       "(fastapi is not installed)")


@pytest.mark.parametrize("module", EXTRAS["onnx"][1])
def test_onnx_back_end_without_its_extra_is_one_line(monkeypatch, tmp_path, module):
    from sonocad.inference.predictor import Predictor

    _hide(monkeypatch, module)
    with pytest.raises(MissingExtraError) as caught:
        Predictor(tmp_path / "model.onnx", backend="onnx")
    assert str(caught.value) == f"{ONNX_MESSAGE} ({module} is not installed)"


def test_export_command_without_onnx(monkeypatch, capsys, tmp_path):
    _hide(monkeypatch, "onnx")
    assert main(["export", str(tmp_path / "model.pt")]) == 2
    assert _one_error_line(capsys) == f"sonocad: error: {ONNX_MESSAGE} (onnx is not installed)"


def test_require_passes_when_installed():
    require("serve")
    require("onnx")


def test_a_broken_install_is_one_line_too(monkeypatch):
    real_import = importlib.import_module

    def broken(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("libonnxruntime.so:\n cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(MissingExtraError) as caught:
        require("onnx")
    assert str(caught.value) == (f"{ONNX_MESSAGE} (import onnxruntime: libonnxruntime.so: "
                                 "cannot open shared object file)")


# The modules that may need an extra: the viewer, ONNX export and the ONNX Runtime back end.
NEEDS_AN_EXTRA = ("sonocad.serve", "sonocad.inference.export", "sonocad.inference.onnx_backend")

CORE_SCRIPT = """
import importlib, pkgutil, sys
hidden = sys.argv[1:]
for module in hidden:
    sys.modules[module] = None
import sonocad
from sonocad.cli import main
from sonocad.extras import MissingExtraError
failed = []
for found in pkgutil.walk_packages(sonocad.__path__, "sonocad.", onerror=lambda name: None):
    try:
        importlib.import_module(found.name)
    except MissingExtraError:
        failed.append(found.name)
    except ModuleNotFoundError as exc:
        if exc.name not in hidden:
            raise
        failed.append(found.name)
print(" ".join(failed))
sys.exit(main(["serve"]))
"""


@pytest.mark.slow  # imports all of sonocad, torch included, afresh
def test_the_core_imports_without_the_extras():
    """A fresh interpreter with every extra's modules hidden: every module of sonocad but the
    viewer's and ONNX's imports (the command line, the torch back end, ...), and `sonocad serve`
    fails with the one line."""
    hidden = [m for _, modules in EXTRAS.values() for m in modules]
    done = subprocess.run([sys.executable, "-c", CORE_SCRIPT, *hidden], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"sonocad: error: {SERVE_MESSAGE} (fastapi is not installed)\n"
    for module in done.stdout.split():
        assert module.startswith(NEEDS_AN_EXTRA), f"{module} needs an extra to import"
