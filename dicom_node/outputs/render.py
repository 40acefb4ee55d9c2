"""Pictures for people: heatmap blending, mask tinting and burned-in text for Secondary Captures."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# A perceptually ordered blue -> cyan -> yellow -> red ramp (anchor colours of "turbo").
_RAMP_POSITIONS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_RAMP_COLOURS = np.array(
    [[48, 18, 59], [40, 188, 235], [164, 252, 60], [251, 128, 34], [122, 4, 3]], dtype=np.float32
)
# Outline colours: fully saturated, so a blend of grey and the ramp (at most half opaque) can
# never produce them; they stay recognisable (and testable) on any radiograph.
HOT_REGION_COLOUR = (255, 255, 0)  # yellow
LUNG_OUTLINE_COLOUR = (0, 255, 255)  # cyan


def fit_within(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale (never upscale) so the long side is at most ``max_side``."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    resized = Image.fromarray(image.astype(np.float32)).resize(size, Image.Resampling.BILINEAR)
    return np.asarray(resized)


def heat_colours(heat: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8."""
    values = np.clip(heat, 0.0, 1.0)
    channels = [np.interp(values, _RAMP_POSITIONS, _RAMP_COLOURS[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).astype(np.uint8)


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def blend_heatmap(
    gray: np.ndarray, heat: np.ndarray, max_alpha: float = 0.5, floor: float = 0.15
) -> np.ndarray:
    """Overlay ``heat`` on a grayscale image; cold areas (below ``floor``) stay untouched."""
    rgb = gray_to_rgb(gray).astype(np.float32)
    alpha = np.clip((heat - floor) / (1.0 - floor), 0.0, 1.0)[..., None] * max_alpha
    blended = rgb * (1.0 - alpha) + heat_colours(heat).astype(np.float32) * alpha
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def tint_mask(
    rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], alpha: float = 0.45
) -> np.ndarray:
    """Tint the pixels under a boolean mask."""
    out = rgb.astype(np.float32)
    out[mask] = out[mask] * (1.0 - alpha) + np.array(colour, dtype=np.float32) * alpha
    return np.asarray(np.clip(out + 0.5, 0, 255), dtype=np.uint8)


def draw_outline(
    rgb: np.ndarray, points_xy: np.ndarray, colour: tuple[int, int, int] = HOT_REGION_COLOUR
) -> np.ndarray:
    """Draw a polygon given as (column, row) points."""
    image = Image.fromarray(rgb)
    width = max(2, round(max(rgb.shape[:2]) / 400))
    ImageDraw.Draw(image).line([tuple(map(float, p)) for p in points_xy], fill=colour, width=width)
    return np.asarray(image)


def heatmap_picture(
    gray: np.ndarray,
    heat: np.ndarray,
    hot_region: np.ndarray,
    lung_outline: Sequence[np.ndarray] = (),
    max_side: int = 1024,
) -> np.ndarray:
    """A radiograph (uint8) with its heatmap blended in, the lung fields outlined in cyan and
    the hot region in yellow (drawn last: it lies on the lungs), at most ``max_side`` pixels.

    Polygons are (column, row) points of the full-size image; they are scaled with it.
    """
    rows, cols = gray.shape
    small = fit_within(gray, max_side)
    scale = np.array([small.shape[1] / cols, small.shape[0] / rows])
    rgb = blend_heatmap(small, fit_within(heat.astype(np.float32), max_side))
    for polygon in lung_outline:
        rgb = draw_outline(rgb, np.asarray(polygon) * scale, LUNG_OUTLINE_COLOUR)
    return draw_outline(rgb, np.asarray(hot_region) * scale, HOT_REGION_COLOUR)


def burn_in_text(
    rgb: np.ndarray, top_lines: Sequence[str], bottom_lines: Sequence[str]
) -> np.ndarray:
    """Write lines on dark boxes at the top-left and bottom-left corners of the image."""
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image, "RGBA")
    size = max(11, round(min(image.size) / 36))
    font = ImageFont.load_default(size=size)
    margin = max(4, size // 3)

    def block(lines: Sequence[str], top: bool) -> None:
        if not lines:
            return
        line_height = size + margin // 2
        height = line_height * len(lines) + margin
        width = max(draw.textlength(line, font=font) for line in lines) + 2 * margin
        y0 = 0 if top else image.size[1] - height
        draw.rectangle([0, y0, min(width, image.size[0]), y0 + height], fill=(0, 0, 0, 190))
        for index, line in enumerate(lines):
            y = y0 + margin // 2 + index * line_height
            draw.text((margin, y), line, fill=(255, 255, 255, 255), font=font)

    block(top_lines, top=True)
    block(bottom_lines, top=False)
    return np.asarray(image.convert("RGB"))
