"""The procedural breast: outline per view, where each pixel falls in the breast's own texture, and lesions.

Everything is drawn in a *canonical* frame — chest wall at column 0, nipple towards larger columns; the writer
mirrors right breasts afterwards. A breast has one texture field; the CC and the MLO view sample it through
different maps (the MLO ellipse is taller and tilted, and each view has its own smooth warp), so both views show
the same tissue — and the same lesions, which live in texture coordinates — in different geometry. Texture
coordinates are expressed in CC-view pixels of the normalised breast frame, so a point inside the CC breast lies
inside the MLO breast too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audit.data.phantoms.texture import smooth_displacement

VIEWS = ("CC", "MLO")
SIDES = ("L", "R")

# Display-domain intensity levels (0 = no attenuation, 1 = the densest tissue), before lesions and noise.
FAT_LEVEL = 0.22
GLAND_LEVEL = 0.68
PECTORAL_LEVEL = 0.74
SKIN_BOOST = 0.10
GLAND_SOFTNESS = 0.45  # sigmoid width of the fat→gland transition, in texture std units
GLAND_ENVELOPE_WEIGHT = 1.2  # glandular tissue sits centrally, fat at the periphery


@dataclass(frozen=True)
class BreastAnatomy:
    """Shape parameters of one breast, as fractions of the image so they hold at any image size."""

    depth: float  # semi-axis towards the nipple, fraction of the width
    half_height: float  # semi-axis along the chest wall, fraction of the height
    centre: float  # chest-wall anchor row, fraction of the height
    outline: tuple[float, ...]  # Fourier modulation (cos k, sin k for k = 2, 3, 4) of the outline radius
    mlo_tilt: float  # radians; the MLO breast axis points down-and-out by this angle
    pectoral: tuple[float, float]  # MLO pectoral triangle: width at the top row, height at the chest wall

    def mirrored_twin(self, rng: np.random.Generator) -> "BreastAnatomy":
        """The other breast: the same woman, so nearly the same shape (a few per cent apart)."""
        jitter = lambda v, s: float(v * (1 + rng.normal(0, s)))  # noqa: E731
        return BreastAnatomy(
            depth=jitter(self.depth, 0.03), half_height=jitter(self.half_height, 0.02),
            centre=jitter(self.centre, 0.01), outline=tuple(float(o + rng.normal(0, 0.005)) for o in self.outline),
            mlo_tilt=float(self.mlo_tilt + rng.normal(0, 0.03)),
            pectoral=(jitter(self.pectoral[0], 0.05), jitter(self.pectoral[1], 0.05)))


def random_anatomy(rng: np.random.Generator) -> BreastAnatomy:
    return BreastAnatomy(
        depth=float(rng.uniform(0.58, 0.84)), half_height=float(rng.uniform(0.34, 0.45)),
        centre=float(rng.uniform(0.47, 0.56)), outline=tuple(float(v) for v in rng.normal(0, 0.018, size=6)),
        mlo_tilt=float(rng.uniform(0.18, 0.42)),
        pectoral=(float(rng.uniform(0.22, 0.40)), float(rng.uniform(0.40, 0.62))))


@dataclass
class ViewGeometry:
    """Per-pixel geometry of one view (canonical orientation)."""

    breast: np.ndarray  # bool, the whole foreground (breast + pectoral muscle)
    pectoral: np.ndarray  # bool, MLO only
    radius: np.ndarray  # float32, normalised outline radius: 0 at the chest-wall anchor, 1 at the skin
    tex_rows: np.ndarray  # float32, texture coordinates (CC-view pixels of the normalised breast frame)
    tex_cols: np.ndarray
    skin_width: float  # skin-line width in radius units


def view_geometry(anatomy: BreastAnatomy, view: str, size: tuple[int, int], cc_anatomy: BreastAnatomy,
                  warp_rng: np.random.Generator) -> ViewGeometry:
    """Outline, pectoral muscle and texture coordinates of one view.

    `cc_anatomy` fixes the texture scale (the CC ellipse of this breast), so that both views of a breast map the
    normalised breast frame to the same texture coordinates.
    """
    h, w = size
    rows = np.arange(h, dtype=np.float32)[:, None]
    cols = np.arange(w, dtype=np.float32)[None, :]
    a_cc, b_cc = cc_anatomy.depth * w, cc_anatomy.half_height * h
    if view == "CC":
        a, b, anchor, tilt = a_cc, b_cc, anatomy.centre * h, 0.0
    elif view == "MLO":
        # Pulled up-and-out along the pectoral: a taller, slightly deeper ellipse whose axis tilts downwards.
        a, b, anchor, tilt = a_cc * 1.04, b_cc * 1.28, (anatomy.centre - 0.06) * h, anatomy.mlo_tilt
    else:
        raise ValueError(f"unknown view {view!r}")
    cos_t, sin_t = np.float32(np.cos(tilt)), np.float32(np.sin(tilt))
    along = cols * cos_t + (rows - anchor) * sin_t  # towards the nipple
    across = -cols * sin_t + (rows - anchor) * cos_t  # along the chest wall
    u, v = along / a, across / b
    rho = np.sqrt(u * u + v * v)
    phi = np.arctan2(v, u)
    modulation = np.ones_like(rho)
    for k, (ca, sa) in zip((2, 3, 4), zip(anatomy.outline[0::2], anatomy.outline[1::2])):
        modulation += np.float32(ca) * np.cos(k * phi) + np.float32(sa) * np.sin(k * phi)
    radius = (rho / modulation).astype(np.float32)
    breast = radius <= 1.0
    if view == "MLO":
        pw, ph = anatomy.pectoral[0] * w, anatomy.pectoral[1] * h
        pectoral = (cols / pw + rows / ph) <= 1.0
        breast = breast | pectoral
    else:
        pectoral = np.zeros((h, w), bool)
    # Texture coordinates: the normalised frame scaled to CC pixels, plus this view's own smooth warp.
    d_rows, d_cols = smooth_displacement((h, w), amplitude=0.025 * min(h, w), rng=warp_rng)
    tex_rows = (v * b_cc + d_rows).astype(np.float32)
    tex_cols = (u * a_cc + d_cols).astype(np.float32)
    skin_width = max(1.5, 0.006 * h) / min(a, b)
    return ViewGeometry(breast, pectoral & breast, radius, tex_rows, tex_cols, float(skin_width))


def gland_envelope(radius: np.ndarray) -> np.ndarray:
    """Where fibroglandular tissue tends to be: central, thinning towards the skin."""
    return (1.0 - np.clip(radius, 0, 1) ** 3).astype(np.float32)


def thickness_profile(radius: np.ndarray) -> np.ndarray:
    """Compressed-breast thickness falls towards the skin, so the periphery looks darker."""
    return np.sqrt(np.clip(1.0 - radius * radius, 0.0, 1.0)).astype(np.float32)


# --------------------------------------------------------------------------------------------------- lesions

@dataclass(frozen=True)
class Finding:
    """One finding row: categories, BI-RADS, and its shape in texture coordinates (so both views agree)."""

    categories: tuple[str, ...]
    birads: int
    centre: tuple[float, float]  # texture (row, col)
    mass_radius: float = 0.0  # 0 = no mass
    mass_outline: tuple[float, ...] = ()  # radial harmonics amplitudes (irregular / lobulated margins)
    spicules: tuple[tuple[float, float, float], ...] = ()  # (angle, length, width)
    calcifications: tuple[tuple[float, float, float, float], ...] = ()  # (d_row, d_col, sigma, amplitude)

    @property
    def reach(self) -> float:
        """Largest distance from the centre at which this finding draws anything."""
        spike = max((length for _, length, _ in self.spicules), default=0.0)
        calc = max((np.hypot(r, c) + 3 * s for r, c, s, _ in self.calcifications), default=0.0)
        return float(max(self.mass_radius * 1.4 + spike, calc))


# Breast-level BI-RADS distribution. VinDr is ~67/23/5/4/1 %; the phantom is flatter so that small test sets
# contain every level and enough findings.
BIRADS_PROBABILITIES = (0.45, 0.25, 0.12, 0.12, 0.06)


def random_findings(birads: int, rng: np.random.Generator, cc_anatomy: BreastAnatomy,
                    size: tuple[int, int]) -> list[Finding]:
    """The findings of a breast with this BI-RADS: none for 1, benign-looking for 2, increasingly suspicious
    (irregular, spiculated, pleomorphic calcifications) for 3-5. A breast's BI-RADS = its worst finding."""
    if birads <= 1:
        return []
    scale = size[0] / 512.0
    findings = [_finding(birads, rng, cc_anatomy, size, scale)]
    if birads >= 4 and rng.random() < 0.25:  # a second, milder finding elsewhere in the breast
        findings.append(_finding(int(rng.integers(2, birads)), rng, cc_anatomy, size, scale))
    return findings


def _lesion_centre(rng: np.random.Generator, anatomy: BreastAnatomy, size: tuple[int, int]) -> tuple[float, float]:
    """A point well inside the breast (normalised radius ≤ 0.65), in texture coordinates."""
    h, w = size
    radius = 0.65 * np.sqrt(rng.uniform(0.1, 1.0))
    angle = rng.uniform(-1.2, 1.2)
    u, v = max(radius * np.cos(angle), 0.18), radius * np.sin(angle)
    return float(v * anatomy.half_height * h), float(u * anatomy.depth * w)


def _finding(birads: int, rng: np.random.Generator, anatomy: BreastAnatomy, size: tuple[int, int],
             scale: float) -> Finding:
    centre = _lesion_centre(rng, anatomy, size)
    if birads == 2:
        kind = "mass"
    elif birads == 3:
        kind = "mass" if rng.random() < 0.6 else "calc"
    elif birads == 4:
        kind = rng.choice(["mass", "calc", "both"], p=[0.5, 0.3, 0.2])
    else:
        kind = "mass" if rng.random() < 0.6 else "both"
    categories: list[str] = []
    mass_radius, outline, spicules, calcs = 0.0, (), (), ()
    if kind in ("mass", "both"):
        categories.append("Mass")
        mass_radius = float(rng.uniform(9, 20) * scale * (1.0 + 0.1 * (birads - 2)))
        # Margins: circumscribed (2) → lobulated (3) → irregular (4) → irregular and spiculated (5).
        irregularity = {2: 0.02, 3: 0.07, 4: 0.14, 5: 0.2}[birads]
        outline = tuple(float(x) for x in rng.normal(0, irregularity, size=8))
        n_spicules = {2: 0, 3: 0, 4: int(rng.integers(0, 6)), 5: int(rng.integers(8, 15))}[birads]
        spicules = tuple((float(rng.uniform(0, 2 * np.pi)), float(mass_radius * rng.uniform(0.8, 1.8)),
                          float(max(0.8, 1.2 * scale))) for _ in range(n_spicules))
    if kind in ("calc", "both"):
        categories.append("Suspicious Calcification")
        n = int(rng.integers(5, 9)) if birads <= 3 else int(rng.integers(10, 26))
        cluster = float(rng.uniform(8, 16) * scale)
        # Round, uniform dots for 3; pleomorphic (varied size) and more numerous for 4-5.
        sigma_lo, sigma_hi = (0.9, 1.2) if birads <= 3 else (0.6, 1.8)
        offsets = rng.normal(0, cluster / 2, size=(n, 2))
        calcs = tuple((float(r), float(c), float(rng.uniform(sigma_lo, sigma_hi) * max(scale, 0.6)),
                       float(rng.uniform(0.3, 0.45))) for r, c in offsets)
    return Finding(tuple(categories), int(birads), centre, mass_radius, outline, spicules, calcs)


# A mass is at least as dense as glandular tissue (so it hides in dense breasts — the masking effect — and
# shows in fatty ones), and a little denser than whatever it sits on.
MASS_LEVEL = 0.74
MASS_EXTRA = 0.06


@dataclass
class FindingDrawing:
    """How one finding changes one view, inside `window`: mass opacity in [0, 1] (body + spicules, which
    blends the tissue towards MASS_LEVEL) and additive calcification brightness."""

    window: tuple[slice, slice]
    opacity: np.ndarray
    calcifications: np.ndarray

    def apply(self, display: np.ndarray) -> None:
        local = display[self.window]
        local += self.opacity * (np.maximum(MASS_LEVEL - local, 0.0) + MASS_EXTRA) + self.calcifications

    @property
    def footprint(self) -> np.ndarray:
        """Pixels (in the window) the finding visibly changes: its lesion mask."""
        return (self.opacity > 0.1) | (self.calcifications > 0.05)


def render_finding(finding: Finding, geometry: ViewGeometry) -> FindingDrawing | None:
    """One finding drawn in one view; None when it falls off the image.

    Computed only in the window of pixels whose texture coordinates are within reach of the finding.
    """
    dr_full = geometry.tex_rows - np.float32(finding.centre[0])
    dc_full = geometry.tex_cols - np.float32(finding.centre[1])
    reach = finding.reach + 2.0
    near = (np.abs(dr_full) < reach) & (np.abs(dc_full) < reach)
    rows_any, cols_any = np.nonzero(near.any(axis=1))[0], np.nonzero(near.any(axis=0))[0]
    if rows_any.size == 0:
        return None
    window = (slice(rows_any[0], rows_any[-1] + 1), slice(cols_any[0], cols_any[-1] + 1))
    dr, dc = dr_full[window], dc_full[window]
    opacity = np.zeros(dr.shape, np.float32)
    calcifications = np.zeros(dr.shape, np.float32)
    if finding.mass_radius > 0:
        dist = np.sqrt(dr * dr + dc * dc)
        angle = np.arctan2(dr, dc)
        boundary = np.ones_like(dist)
        for k, (ca, sa) in enumerate(zip(finding.mass_outline[0::2], finding.mass_outline[1::2]), start=2):
            boundary += np.float32(ca) * np.cos(k * angle) + np.float32(sa) * np.sin(k * angle)
        boundary *= np.float32(finding.mass_radius)
        opacity = np.maximum(opacity, np.clip(1.0 - (dist / boundary) ** 2, 0.0, 1.0) ** 0.5)
        for spike_angle, length, width in finding.spicules:
            along = dc * np.cos(spike_angle) + dr * np.sin(spike_angle)
            across = -dc * np.sin(spike_angle) + dr * np.cos(spike_angle)
            fade = np.clip(1.0 - along / (finding.mass_radius + length), 0.0, 1.0) * (along > 0)
            opacity = np.maximum(opacity, 0.6 * np.exp(-(across / width) ** 2) * fade)
    for d_row, d_col, sigma, amplitude in finding.calcifications:
        r2 = (dr - d_row) ** 2 + (dc - d_col) ** 2
        calcifications += amplitude * np.exp(-r2 / (2 * sigma * sigma))
    inside = geometry.breast[window]
    return FindingDrawing(window, (opacity * inside).astype(np.float32),
                          (calcifications * inside).astype(np.float32))


def lesion_box(drawing: FindingDrawing) -> tuple[int, int, int, int] | None:
    """Pixel-edge box (xmin, ymin, xmax, ymax) around a finding's footprint, canonical frame."""
    rows, cols = np.nonzero(drawing.footprint)
    if rows.size == 0:
        return None
    r0, c0 = drawing.window[0].start, drawing.window[1].start
    return (int(c0 + cols.min()), int(r0 + rows.min()), int(c0 + cols.max() + 1), int(r0 + rows.max() + 1))
