"""Optional extras: without one, the command that needs it fails with one line naming the fix.

The core install (data, train, evaluate, predict and explain on the torch back end, report)
needs none of them. `sonocad serve` needs the serve extra; `sonocad export` and the onnx back
end need the onnx extra; outlines from boxes (`outline`, the viewer's boxes) need the interactive
extra. Call `require(extra)` just before importing the modules that use it.
"""

from __future__ import annotations

import importlib
import importlib.util

from sonocad.errors import SonocadError, _one_line

# extra -> (what needs it, the modules it installs, as imported)
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "serve": ("sonocad serve", ("fastapi", "uvicorn", "python_multipart")),
    "onnx": ("ONNX (sonocad export, the onnx back end)", ("onnx", "onnxruntime")),
    "interactive": ("outlining from a box (sonocad outline, the viewer's boxes)",
                    ("timm", "segment_anything")),  # the weights: io.wheel_assets
}


class MissingExtraError(SonocadError):
    """An optional extra (a `pip install "sonocad[extra]"`) is not installed."""


def missing(extra: str) -> str | None:
    """Why `extra` is not installed, as `require` says it, or None; its modules are found, not
    imported (importing the interactive extra's would load torch)."""
    needed_by, modules = EXTRAS[extra]
    absent = next((module for module in modules if importlib.util.find_spec(module) is None),
                  None)
    return None if absent is None else (f'{needed_by} needs the {extra} extra: '
                                        f'pip install "sonocad[{extra}]" ({absent} is not '
                                        f'installed)')


def require(extra: str) -> None:
    """Import the modules of `extra`, or raise a one-line `MissingExtraError` with the pip
    command that installs them."""
    needed_by, modules = EXTRAS[extra]
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            why = f"{exc.name or module} is not installed"
        except ImportError as exc:  # installed but broken (a missing shared library, say)
            why = f"import {module}: {_one_line(str(exc))}"
        else:
            continue
        raise MissingExtraError(f'{needed_by} needs the {extra} extra: '
                                f'pip install "sonocad[{extra}]" ({why})') from None
