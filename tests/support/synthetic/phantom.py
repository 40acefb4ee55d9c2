"""A chest CT phantom described by simple shapes, rendered slice by slice with its ground truth.

Patient coordinates follow DICOM (LPS): +x is the patient's left, +y posterior, +z superior.
Slice ``k = 0`` is the most superior one.  The phantom is rendered in chunks of slices so that
long series never need the whole volume in memory.

Partial volume is modelled by a Gaussian blur in-plane (the scanner's point spread) and noise
is added on top; the truth is counted on the labels before blurring, so it is exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

# Labels of the rendered phantom.
OUTSIDE, FAT, SOFT, BONE, LUNG, AIRWAY, VESSEL, GGO, CONSOLIDATION, MASS = range(10)

# Mean Hounsfield units per label (unenhanced CT).
LABEL_HU = np.array([-1000, -100, 40, 500, -850, -1000, 40, -550, -30, 35], dtype=np.float32)

# Side codes of the lung map.
RIGHT, LEFT = 1, 2

LesionKind = Literal["ggo", "consolidation", "mass"]


@dataclass(frozen=True)
class Ball:
    """A lesion: a ball clipped to the lung it lies in; ``pleural`` ones cross the lung surface.

    ``halo`` (mm): a ground-glass shell around the ball, as around COVID-19 consolidation.  A
    ``mass`` is a solid tumour-like ball (soft-tissue HU): not GGO or consolidation.
    """

    center: tuple[float, float, float]
    radius: float
    kind: LesionKind
    pleural: bool = False
    halo: float = 0.0

    @property
    def outer_radius(self) -> float:
        return self.radius + self.halo


@dataclass(frozen=True)
class Tube:
    """A straight capsule (segment with radius): airway lumen or a vessel."""

    start: tuple[float, float, float]
    end: tuple[float, float, float]
    radius: float


@dataclass(frozen=True)
class Ellipsoid:
    center: tuple[float, float, float]
    semi_axes: tuple[float, float, float]


@dataclass(frozen=True)
class LungTruth:
    lung_ml: float
    ggo_ml: float
    consolidation_ml: float
    mass_ml: float = 0.0

    @property
    def lesion_ml(self) -> float:
        return self.ggo_ml + self.consolidation_ml

    @property
    def involvement_percent(self) -> float:
        return 100.0 * self.lesion_ml / self.lung_ml if self.lung_ml else 0.0


@dataclass(frozen=True)
class PhantomTruth:
    """Volumes counted on the rendered labels (airway lumen is not lung; vessels are)."""

    right: LungTruth
    left: LungTruth
    voxel_ml: float

    @property
    def total(self) -> LungTruth:
        return LungTruth(
            lung_ml=self.right.lung_ml + self.left.lung_ml,
            ggo_ml=self.right.ggo_ml + self.left.ggo_ml,
            consolidation_ml=self.right.consolidation_ml + self.left.consolidation_ml,
            mass_ml=self.right.mass_ml + self.left.mass_ml,
        )


@dataclass(frozen=True)
class Phantom:
    rows: int
    cols: int
    n_slices: int
    pixel_spacing: float  # mm, square pixels
    slice_spacing: float  # mm
    body: tuple[float, float]  # semi-axes (x, y) of the elliptic body cylinder, mm
    fat_thickness: float
    spine: tuple[float, float, float]  # centre x, y and radius of the bony column, mm
    right_lung: Ellipsoid
    left_lung: Ellipsoid
    airway: tuple[Tube, ...]  # lumen
    airway_walls: tuple[Tube, ...]  # soft tissue around the lumen; open where bronchi end
    vessels: tuple[Tube, ...]
    balls: tuple[Ball, ...]
    noise_hu: float
    blur_px: float
    seed: int

    @property
    def z_top(self) -> float:
        return 0.5 * (self.n_slices - 1) * self.slice_spacing

    def slice_z(self, k: int) -> float:
        return self.z_top - k * self.slice_spacing

    @property
    def origin_xy(self) -> tuple[float, float]:
        """Patient (x, y) of the centre of pixel (row 0, column 0)."""
        return (
            -0.5 * (self.cols - 1) * self.pixel_spacing,
            -0.5 * (self.rows - 1) * self.pixel_spacing,
        )

    @property
    def voxel_ml(self) -> float:
        return self.pixel_spacing**2 * self.slice_spacing / 1000.0

    def chunks(self, chunk: int = 16) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(first_slice, hu float32, labels uint8, side uint8)`` for consecutive chunks."""
        rng = np.random.default_rng(self.seed)
        for k0 in range(0, self.n_slices, chunk):
            k1 = min(self.n_slices, k0 + chunk)
            labels, side = self.render_labels(k0, k1)
            hu = LABEL_HU[labels]
            if self.blur_px > 0:
                hu = ndimage.gaussian_filter(hu, sigma=(0, self.blur_px, self.blur_px))
            if self.noise_hu > 0:
                hu += rng.normal(0.0, self.noise_hu, size=hu.shape).astype(np.float32)
            yield k0, hu, labels, side

    def render_labels(self, k0: int, k1: int) -> tuple[np.ndarray, np.ndarray]:
        """Labels and lung side (0 none, 1 right, 2 left) of slices ``k0 .. k1 - 1``."""
        x0, y0 = self.origin_xy
        z = np.array([self.slice_z(k) for k in range(k0, k1)], dtype=np.float32)[:, None, None]
        y = (y0 + self.pixel_spacing * np.arange(self.rows, dtype=np.float32))[None, :, None]
        x = (x0 + self.pixel_spacing * np.arange(self.cols, dtype=np.float32))[None, None, :]
        shape = (k1 - k0, self.rows, self.cols)
        labels = np.zeros(shape, dtype=np.uint8)
        side = np.zeros(shape, dtype=np.uint8)

        ax, ay = self.body
        outer = (x / ax) ** 2 + (y / ay) ** 2 <= 1.0
        t = self.fat_thickness
        inner = (x / (ax - t)) ** 2 + (y / (ay - t)) ** 2 <= 1.0
        labels[np.broadcast_to(outer, shape)] = FAT
        labels[np.broadcast_to(inner, shape)] = SOFT
        sx, sy, sr = self.spine
        labels[np.broadcast_to((x - sx) ** 2 + (y - sy) ** 2 <= sr**2, shape)] = BONE

        for code, lung in ((RIGHT, self.right_lung), (LEFT, self.left_lung)):
            (cx, cy, cz), (a, b, c) = lung.center, lung.semi_axes
            inside = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 + ((z - cz) / c) ** 2 <= 1.0
            labels[inside] = LUNG
            side[inside] = code

        coords = (z, y, x)
        for tube in self.vessels:
            box, mask = _tube_mask(tube, tube.radius, coords, self)
            if mask is not None:
                sub = labels[box]
                sub[mask & (side[box] > 0)] = VESSEL
        for tube in self.airway_walls:
            box, mask = _tube_mask(tube, tube.radius, coords, self)
            if mask is not None:
                labels[box][mask] = SOFT
        for tube in self.airway:
            box, mask = _tube_mask(tube, tube.radius, coords, self)
            if mask is not None:
                labels[box][mask] = AIRWAY
        kinds = {"ggo": GGO, "consolidation": CONSOLIDATION, "mass": MASS}
        for ball in self.balls:
            layers = [(ball.outer_radius, GGO)] if ball.halo > 0 else []
            for radius, label in [*layers, (ball.radius, kinds[ball.kind])]:
                shape = Ball(ball.center, radius, ball.kind)
                box, mask = _ball_mask(shape, coords, self)
                if mask is not None:
                    sub = labels[box]
                    open_lung = (sub == LUNG) | (sub == VESSEL) | (sub == GGO)
                    sub[mask & (side[box] > 0) & open_lung] = label
        return labels, side

    def truth(self, chunk: int = 32) -> PhantomTruth:
        counts = np.zeros((3, 10), dtype=np.int64)
        for k0 in range(0, self.n_slices, chunk):
            labels, side = self.render_labels(k0, min(self.n_slices, k0 + chunk))
            np.add.at(counts, (side.ravel(), labels.ravel()), 1)
        return truth_from_counts(counts, self.voxel_ml)


def truth_from_counts(counts: np.ndarray, voxel_ml: float) -> PhantomTruth:
    """``counts[side, label]`` voxel counts -> volumes per lung."""

    def lung(code: int) -> LungTruth:
        row = counts[code]
        lung_voxels = int(row.sum() - row[AIRWAY])
        return LungTruth(
            lung_ml=lung_voxels * voxel_ml,
            ggo_ml=int(row[GGO]) * voxel_ml,
            consolidation_ml=int(row[CONSOLIDATION]) * voxel_ml,
            mass_ml=int(row[MASS]) * voxel_ml,
        )

    return PhantomTruth(right=lung(RIGHT), left=lung(LEFT), voxel_ml=voxel_ml)


def _box(
    lo: np.ndarray, hi: np.ndarray, coords: tuple[np.ndarray, np.ndarray, np.ndarray], ph: Phantom
) -> tuple[slice, slice, slice] | None:
    """Index box of the chunk covering patient-space bounds ``lo .. hi`` (x, y, z)."""
    z, y, x = coords
    zs = np.flatnonzero((z.ravel() >= lo[2]) & (z.ravel() <= hi[2]))
    ys = np.flatnonzero((y.ravel() >= lo[1]) & (y.ravel() <= hi[1]))
    xs = np.flatnonzero((x.ravel() >= lo[0]) & (x.ravel() <= hi[0]))
    if zs.size == 0 or ys.size == 0 or xs.size == 0:
        return None
    return (
        slice(int(zs[0]), int(zs[-1]) + 1),
        slice(int(ys[0]), int(ys[-1]) + 1),
        slice(int(xs[0]), int(xs[-1]) + 1),
    )


def _crop(
    coords: tuple[np.ndarray, np.ndarray, np.ndarray], box: tuple[slice, slice, slice]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z, y, x = coords
    return z[box[0]], y[:, box[1]], x[:, :, box[2]]


def _tube_mask(
    tube: Tube, radius: float, coords: tuple[np.ndarray, np.ndarray, np.ndarray], ph: Phantom
) -> tuple[tuple[slice, slice, slice], np.ndarray | None]:
    a = np.array(tube.start, dtype=np.float32)
    b = np.array(tube.end, dtype=np.float32)
    box = _box(np.minimum(a, b) - radius, np.maximum(a, b) + radius, coords, ph)
    if box is None:
        return (slice(0), slice(0), slice(0)), None
    z, y, x = _crop(coords, box)
    ab = b - a
    t = ((x - a[0]) * ab[0] + (y - a[1]) * ab[1] + (z - a[2]) * ab[2]) / float(ab @ ab)
    t = np.clip(t, 0.0, 1.0)
    d2 = (x - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2 + (z - a[2] - t * ab[2]) ** 2
    return box, d2 <= radius**2


def _ball_mask(
    ball: Ball, coords: tuple[np.ndarray, np.ndarray, np.ndarray], ph: Phantom
) -> tuple[tuple[slice, slice, slice], np.ndarray | None]:
    c = np.array(ball.center, dtype=np.float32)
    box = _box(c - ball.radius, c + ball.radius, coords, ph)
    if box is None:
        return (slice(0), slice(0), slice(0)), None
    z, y, x = _crop(coords, box)
    d2 = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2
    return box, d2 <= ball.radius**2


def make_phantom(
    size: int = 128,
    n_slices: int = 48,
    slice_spacing: float | None = None,
    fov_mm: float = 340.0,
    n_ggo: int = 6,
    n_consolidation: int = 4,
    n_pleural: int = 4,
    n_vessels: int = 30,
    noise_hu: float = 20.0,
    blur_px: float = 0.5,
    seed: int = 0,
    n_mass: int = 0,
    ggo_radius: tuple[float, float] = (10.0, 25.0),
    halo_fraction: float = 0.6,
) -> Phantom:
    """An adult-sized chest phantom.

    The series covers ``n_slices * slice_spacing`` mm (default 300 mm of chest).  The lungs are
    at most 250 mm tall and sit 35 mm below the top slice so that the trachea enters from above;
    a longer series continues into a lung-free "abdomen".  Lesions are placed at random (seeded)
    without overlapping each other or the airway; ``n_pleural`` of them straddle the pleura.
    """
    spacing = slice_spacing if slice_spacing is not None else 300.0 / n_slices
    coverage = n_slices * spacing
    if coverage < 120.0:
        raise ValueError(f"the phantom needs at least 120 mm of coverage, got {coverage:.0f} mm")
    rng = np.random.default_rng(seed)
    z_top = 0.5 * (n_slices - 1) * spacing
    height = min(250.0, coverage - 50.0)
    cz = z_top - 35.0 - height / 2
    hz = height / 2
    f = fov_mm
    right = Ellipsoid((-0.2 * f, 0.01 * f, cz), (0.14 * f, 0.21 * f, hz))
    left = Ellipsoid((0.2 * f, 0.01 * f, cz + 0.03 * hz), (0.13 * f, 0.20 * f, 0.97 * hz))

    carina = (0.0, -0.05 * f, cz + 0.45 * hz)
    lumen = 0.03 * f
    airway = (
        Tube((0.0, -0.05 * f, z_top + spacing), carina, lumen),
        Tube(carina, (-0.15 * f, -0.02 * f, cz + 0.2 * hz), 0.02 * f),
        Tube(carina, (0.15 * f, -0.02 * f, cz + 0.2 * hz), 0.02 * f),
    )

    # Walls 2 mm thick; the bronchi's walls stop short so their lumen opens into the lung.
    walls = [Tube(airway[0].start, airway[0].end, lumen + 2.0)]
    for bronchus in airway[1:]:
        p0, p1 = np.array(bronchus.start), np.array(bronchus.end)
        short = p1 - (p1 - p0) / np.linalg.norm(p1 - p0) * (bronchus.radius + 4.0)
        end = (float(short[0]), float(short[1]), float(short[2]))
        walls.append(Tube(bronchus.start, end, bronchus.radius + 2.0))

    vessels: list[Tube] = []
    for lung in (right, left):
        (lx, ly, lz), (a, b, c) = lung.center, lung.semi_axes
        medial = float(lx - np.sign(lx) * 0.55 * a)
        for _ in range(n_vessels):
            start = (medial, ly + rng.uniform(-0.3, 0.3) * b, lz + rng.uniform(-0.5, 0.5) * c)
            u = _random_unit(rng)
            end = (lx + 0.85 * a * u[0], ly + 0.85 * b * u[1], lz + 0.85 * c * u[2])
            vessels.append(Tube(start, end, float(rng.uniform(1.2, 2.4))))

    balls: list[Ball] = []
    Plan = tuple[LesionKind, bool, tuple[float, float]]
    ggo: Plan = ("ggo", False, ggo_radius)
    dense: Plan = ("consolidation", False, (8.0, 18.0))
    subpleural: tuple[Plan, Plan] = (
        ("consolidation", True, (12.0, 20.0)),
        ("ggo", True, (12.0, 20.0)),
    )
    plan = [ggo] * n_ggo + [dense] * n_consolidation
    plan += [subpleural[i % 2] for i in range(n_pleural)]
    plan += [("mass", False, (12.0, 20.0))] * n_mass
    for i, (kind, pleural, (rmin, rmax)) in enumerate(plan):
        lung = (right, left)[i % 2]
        for _attempt in range(200):
            radius = float(rng.uniform(rmin, rmax))
            # Consolidation sits in ground glass, as in COVID-19 pneumonia.
            halo = max(5.0, halo_fraction * radius) if kind == "consolidation" else 0.0
            center = _lesion_centre(lung, radius + halo, pleural, rng)
            if _clear(center, radius + halo, balls, airway):
                balls.append(Ball(center, radius, kind, pleural, halo))
                break

    return Phantom(
        rows=size,
        cols=size,
        n_slices=n_slices,
        pixel_spacing=fov_mm / size,
        slice_spacing=spacing,
        body=(0.44 * f, 0.31 * f),
        fat_thickness=0.02 * f,
        spine=(0.0, 0.24 * f, 0.045 * f),
        right_lung=right,
        left_lung=left,
        airway=airway,
        airway_walls=tuple(walls),
        vessels=tuple(vessels),
        balls=tuple(balls),
        noise_hu=noise_hu,
        blur_px=blur_px,
        seed=seed,
    )


def _random_unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return np.asarray(v / np.linalg.norm(v))


def _lesion_centre(
    lung: Ellipsoid, radius: float, pleural: bool, rng: np.random.Generator
) -> tuple[float, float, float]:
    centre = np.array(lung.center)
    axes = np.array(lung.semi_axes)
    if pleural:
        # On the lateral or posterior surface (the usual subpleural sites), half a radius in.
        u = _random_unit(rng)
        u[0] = abs(u[0]) * np.sign(centre[0])
        u[1] = abs(u[1])
        u[2] *= 0.6
        u /= np.linalg.norm(u)
        surface = centre + u / np.sqrt(np.sum((u / axes) ** 2))
        normal = (surface - centre) / axes**2
        normal /= np.linalg.norm(normal)
        p = surface - 0.5 * radius * normal
    else:
        # Fully inside: sample in the ellipsoid shrunk by the radius plus a margin.
        shrunk = np.maximum(axes - radius - 5.0, 1.0)
        while True:
            v = rng.uniform(-1.0, 1.0, size=3)
            if v @ v <= 1.0:
                break
        p = centre + v * shrunk
    return (float(p[0]), float(p[1]), float(p[2]))


def _clear(
    center: tuple[float, float, float], radius: float, balls: list[Ball], airway: tuple[Tube, ...]
) -> bool:
    c = np.array(center)
    for other in balls:
        if np.linalg.norm(c - np.array(other.center)) < radius + other.outer_radius + 2.0:
            return False
    for tube in airway:
        a, b = np.array(tube.start), np.array(tube.end)
        t = np.clip((c - a) @ (b - a) / ((b - a) @ (b - a)), 0.0, 1.0)
        if np.linalg.norm(c - (a + t * (b - a))) < radius + tube.radius + 10.0:
            return False
    return True
