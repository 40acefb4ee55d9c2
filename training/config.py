"""Per-model hyper-parameters: ``training/configs/<model>.toml`` read into frozen dataclasses.

Every hyper-parameter of a shipped model's run lives in its model's file (the dataclasses below
have no defaults, so the file spells each one out).  A ``train_*`` script reads the file given by
``--config`` (default: the shipped one, :func:`default_path`), applies its command-line overrides
(:func:`override`) and records the file's path, SHA-256 and the values it used in the card it
writes (:func:`record`).  Unknown or missing keys and values of the wrong type are errors that
name the file and the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast, get_args, get_origin, get_type_hints

__all__ = [
    "CONFIG_DIR",
    "LungSegConfig",
    "SeverityConfig",
    "ViewAugment",
    "XrayConfig",
    "add_argument",
    "default_path",
    "load",
    "override",
    "record",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
_REPOSITORY = CONFIG_DIR.parents[1]

C = TypeVar("C")


@dataclass(frozen=True, kw_only=True)
class ViewAugment:
    """Random changes made to a radiograph before the lung crop (one seeded draw per view)."""

    rotation_deg: float
    margin: tuple[float, float]  # crop margin range around the lung box
    gamma: float  # gamma in [1/gamma, gamma], log-uniform
    noise: float  # max std of Gaussian noise
    lowres_prob: float  # probability of down-and-up sampling
    lowres_min: float  # smallest down-sampling factor


@dataclass(frozen=True, kw_only=True)
class XrayConfig:
    """``configs/xray_classifier.toml``: the lung-field X-ray classifier (``train_xray``)."""

    seed: int
    input_size: int
    views: int
    covid_sensitivity: float
    out_of_set: tuple[str, ...]
    c_grid: tuple[float, ...]
    source_balance_grid: tuple[float, ...]
    ood_components: int
    ood_quantile: float
    ood_margin: float
    augment: ViewAugment


@dataclass(frozen=True, kw_only=True)
class SeverityConfig:
    """``configs/xray_severity.toml``: the COVID-19 severity head (``train_xray_severity``)."""

    seed: int
    views: int
    repeats: int
    folds: int
    components_grid: tuple[int, ...]
    level_thresholds: tuple[float, float, float]
    augment: ViewAugment


@dataclass(frozen=True, kw_only=True)
class LungSegConfig:
    """``configs/lung_segmentation.toml``: the lung-field segmentation (``train_lungseg``)."""

    seed: int
    input_size: int
    epochs: int
    steps_per_epoch: int
    batch_size: int
    learning_rate: float
    filters: tuple[int, ...]
    positive_fraction: float  # of each batch; the rest CT slices and synthetic images
    ct_fraction: float
    thresholds: tuple[float, ...]
    sources_measured: tuple[str, ...]
    per_source_measured: int
    negatives_measured: int


def default_path(model: str) -> Path:
    """The shipped configuration of ``model`` (its artefact name under ``models/``)."""
    return CONFIG_DIR / f"{model}.toml"


def add_argument(parser: argparse.ArgumentParser, model: str) -> None:
    """The ``--config`` option of a ``train_*`` script."""
    parser.add_argument(
        "--config",
        type=Path,
        default=default_path(model),
        help=f"hyper-parameters, TOML (default: training/configs/{model}.toml)",
    )


def load(cls: type[C], path: Path) -> C:
    """The configuration in ``path`` as ``cls``; ValueError names the file and the key."""
    with path.open("rb") as handle:
        data = tomllib.load(handle)
    try:
        return cast(C, _build(cls, data, ""))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def override(cfg: C, **values: Any) -> C:
    """``cfg`` with the command-line values that were given (None: not given)."""
    given = {k: v for k, v in values.items() if v is not None}
    return cast(C, dataclasses.replace(cast(Any, cfg), **given))


def record(path: Path, cfg: object) -> dict[str, Any]:
    """What a card says about the run's configuration: the file (relative to the repository
    when inside it), its SHA-256, and the values used (after command-line overrides)."""
    resolved = path.resolve()
    shown = resolved.relative_to(_REPOSITORY) if resolved.is_relative_to(_REPOSITORY) else resolved
    return {
        "file": str(shown),
        "sha256": hashlib.sha256(resolved.read_bytes()).hexdigest(),
        "values": _plain(dataclasses.asdict(cast(Any, cfg))),
    }


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _build(cls: Any, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'the file'} must be a table")
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s): {', '.join(prefix + k for k in unknown)}")
    hints = get_type_hints(cls)
    values = {}
    for name in fields:
        if name not in data:
            raise ValueError(f"{prefix + name!r} is missing")
        values[name] = _value(hints[name], data[name], prefix + name)
    return cls(**values)


def _value(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, f"{key}.")
    if get_origin(tp) is tuple:
        args = get_args(tp)
        if not isinstance(value, list):
            raise ValueError(f"{key} must be an array")
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        elif len(value) != len(args):
            raise ValueError(f"{key} must have {len(args)} values")
        return tuple(
            _value(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    raise ValueError(f"{key} must be {getattr(tp, '__name__', tp)}, got {value!r}")
