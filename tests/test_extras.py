"""Optional extras: without `serve` or `onnx`, the command that needs one fails with one line
naming the pip command; the core (the torch back end) imports and runs without them."""

from __future__ import annotations

import importlib
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


# That the core imports without the extras at all (no module but the viewer's and ONNX's
# imports their packages, and the core reaches those only behind `require`) is a lint rule:
# the "extras" contract in .importlinter, which `make test` runs.
