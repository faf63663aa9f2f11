"""Procedural 3D and 4D faces driven by FACS action units: the synthetic stand-in for BU-3DFE and BU-4DFE.

A subject is a smooth parametric face: a triangulated height field over an egg-shaped face region, in millimetres,
+y up, +z towards the viewer, with the nose tip as the most frontal point. Its shape comes from per-subject random
parameters (face size, nose, eyes, brows, cheekbones, lips, chin, jaw, asymmetry, low-frequency bumps), mildly
driven by gender and race. Every action unit (AU) is a smooth displacement field anchored at that subject's own
features, so an expression is a weighted sum of per-subject basis fields.

Nuisance factors make the benchmark hard, each a knob of :class:`SyntheticConfig`: per-subject expression style
(AU gains, dropped and added AUs, a co-activated second expression), head pose, a scanner origin away from the
nose tip, scanner noise and spikes, holes, crop extent and mesh density. ``SyntheticConfig().clean()`` switches
the acquisition nuisances off.

People vary as in real scans, again each a knob:

* identity confounds expression: every subject's neutral face carries a resting expression (its own AU fields
  with random weights: a face that looks a bit sad or angry at rest). :func:`identity_subspace_fraction`
  measures how much of each expression then lies in the identity subspace (88-92 % in a real face model);
* intensities are person-specific: an overall gain, per-AU gains, and a floor and ceiling of intensity;
* AUs act asymmetrically (per-subject left/right gains) and pull in their usual partners (AU6 with AU12...);
* with ``au_field_variation`` (off by default), each person's AU fields also act over their own extent and place
  and mix their displacement between the axes, instead of following one template;
* prototypes overlap as in the EMFACS variants: anger, fear and sadness share AU4, fear and sadness AU1;
* three shape families (``shape_family``: feature placement, bump basis, triangulation) and the mesh density
  let one pretrain on one generator and test on a clearly different one (``SyntheticConfig.transfer_target()``);
  by default each subject comes from family a or b, so that family c stays unseen.

No texture is written: the BU-3DFE writer supports texture coordinates and an image name, but an image per scan
and a texture coordinate per vertex would make writing (the bulk of generation time) markedly slower.

Every random draw comes from a numpy ``SeedSequence`` keyed by (seed, purpose, subject, expression, intensity), so
a scan does not depend on what else was generated, or in which order.
"""

from __future__ import annotations

import csv
import os
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from types import SimpleNamespace
from typing import Optional

import numpy as np
from tqdm.auto import tqdm

from modeling_facet.mesh_io import FaceScan

from .bu_codes import BU4DFE_FOLDERS, BU4DFE_LANDMARK_DIR, RACE_CODES
from .bu_codes import EXPRESSION_CODES as EXPRESSIONS
from .scan_writers import write_bnd, write_wrl


AU_LIST = (1, 2, 4, 5, 6, 7, 9, 10, 12, 15, 16, 17, 20, 23, 24, 25, 26, 27)
AU_NAMES = tuple(f"AU{number}" for number in AU_LIST)
_AU_INDEX = {number: index for index, number in enumerate(AU_LIST)}

EMOTION_CODES = tuple(code for code in EXPRESSIONS if code != "NE")
RACES = tuple(RACE_CODES)
_RACE_WEIGHTS = np.array([51, 9, 24, 2, 6, 8], dtype=np.float64) / 100.0  # BU-3DFE subject counts
LABELS_FILENAME = "synthetic_labels.csv"
# Changes whenever the same SyntheticConfig makes other faces, so that no cache outlives the generator that made it
# (the synthetic builder's trees and views, the synthetic-pretrained model). 2: families c and a+b, a+b the default.
GENERATOR_VERSION = 2

# EMFACS prototypes as (core, optional) AU -> apex activation. A subject's style may omit optional AUs, so each
# subject shows one of the EMFACS variants (anger 4+5+7+23/24/17, fear 1+2+4+5(+20)(+25/26), sadness 1+4+15(+17)
# or 6+15...). Anger, fear and sadness all contain AU4, fear and sadness AU1, as in real confusions. A smile moves
# the lip corners further than the other AUs move their tissue (AU12 at 1.3).
PROTOTYPES = {
    "AN": ({4: 1.0, 7: 0.8}, {5: 0.6, 10: 0.3, 17: 0.6, 23: 0.9, 24: 0.7}),
    "DI": ({9: 1.0}, {10: 0.7, 15: 0.5, 16: 0.5, 17: 0.5, 25: 0.3}),
    "FE": ({1: 0.9, 2: 0.6, 4: 0.9, 5: 0.8}, {7: 0.5, 20: 1.0, 25: 0.6, 26: 0.5}),
    "HA": ({12: 1.3}, {6: 0.8, 25: 0.5}),
    "SA": ({1: 0.8, 4: 0.7, 15: 1.0}, {6: 0.4, 17: 0.6, 25: 0.3}),
    "SU": ({1: 1.0, 2: 1.0, 26: 1.0}, {5: 0.4, 27: 0.5}),
}
# AUs that real faces tend to activate together (DISFA and BP4D co-occurrence): an active AU may pull in its partner.
_COACTIVATION = {1: 2, 2: 1, 4: 7, 6: 12, 7: 4, 9: 10, 10: 9, 12: 6, 15: 17, 17: 24, 20: 25, 23: 24, 24: 17, 26: 25,
                 27: 25}
# Resting expressions: brows, lids and chin vary most between people at rest; cheeks, nose, lips and mouth opening
# half as much (these scale the subject's resting sigma). Mouth opening only opens.
_RESTING_SCALE = {au: 0.5 for au in (6, 9, 10, 12, 15, 16, 20, 23, 24, 25, 26, 27)}
_RESTING_ONE_SIDED = (25, 26, 27)

# The 83-point BU scheme in groups of rows: eye x<0, other eye, brow x<0, other brow, nose, mouth, contour.
LANDMARK_GROUPS = {
    "eye_x_negative": range(0, 8),
    "eye_x_positive": range(8, 16),
    "brow_x_negative": range(16, 26),
    "brow_x_positive": range(26, 36),
    "nose": range(36, 48),
    "mouth": range(48, 68),
    "contour": range(68, 83),
}

# Identity priors as (mean, sd) in mm (ratios and slopes unitless), for a white female; factors below scale means.
_SHAPE_PRIOR = {
    "half_width": (68.0, 4.0),
    "half_height": (96.0, 5.0),
    "center_y": (-12.0, 3.0),
    "jaw_ratio": (0.72, 0.05),
    "head_radius": (88.0, 5.0),
    "profile_radius": (160.0, 20.0),
    "eye_half_spacing": (32.0, 2.0),
    "eye_y": (33.0, 3.0),
    "eye_depth": (9.0, 1.5),
    "brow_ridge": (3.0, 1.0),
    "nose_height": (22.0, 3.0),
    "bridge_height": (8.0, 2.0),
    "nose_width": (9.0, 1.2),
    "ala_spacing": (16.0, 1.5),
    "cheekbone": (3.5, 1.2),
    "mouth_y": (-30.0, 3.0),
    "mouth_half_width": (24.0, 2.0),
    "lip_fullness": (4.0, 1.0),
    "muzzle": (7.0, 2.0),
    "chin": (5.0, 1.5),
    "chin_drop": (38.0, 3.0),
    "tilt": (0.0, 0.02),
    "nose_shift": (0.0, 1.5),
    "side_gain": (0.0, 0.05),
}
_GROUP_FACTORS = {
    "F": {},
    "M": {
        "half_width": 1.05, "half_height": 1.05, "jaw_ratio": 1.07, "brow_ridge": 1.5, "nose_height": 1.1,
        "chin": 1.3, "chin_drop": 1.08, "eye_half_spacing": 1.03,
    },
    "WH": {"nose_height": 1.05},
    "BL": {
        "nose_width": 1.25, "ala_spacing": 1.2, "lip_fullness": 1.35, "muzzle": 1.3, "bridge_height": 0.8,
        "nose_height": 0.9,
    },
    "AE": {
        "nose_height": 0.82, "bridge_height": 0.6, "brow_ridge": 0.7, "cheekbone": 1.3, "half_width": 1.03,
        "head_radius": 1.06, "eye_depth": 0.8, "nose_width": 1.08,
    },
    "AM": {"nose_height": 1.1, "brow_ridge": 1.1},
    "IN": {"nose_width": 1.05, "lip_fullness": 1.1},
    "LA": {"nose_width": 1.08, "cheekbone": 1.1},
}
_SHAPE_BUMPS = 10  # low-frequency random bumps per identity
# Shape families (SyntheticConfig.shape_family). "a": the priors above, Gaussian bumps, quads split along one
# diagonal. "b": feature placement shifted by these means (mm) and its spread scaled by these factors, random
# low-order cosine fields instead of bumps (in depth and within the face plane), quads split the other way. "c":
# shifted and spread another way, random plane waves (in depth and within the plane), quads split in a checkerboard.
# "a+b": each subject from family a or b (equally likely); family c is then the unseen one.
_MIXED_MEMBERS = ("a", "b")
_MIXED_FAMILY = "+".join(_MIXED_MEMBERS)
_TRANSFER_FAMILY = {"a": "b", "b": "a", _MIXED_FAMILY: "c", "c": _MIXED_FAMILY}
_FAMILY_SHIFTS = {
    "b": {"eye_y": 4.0, "mouth_y": -4.0, "eye_half_spacing": 2.0, "nose_height": -2.0, "profile_radius": -30.0,
          "head_radius": -6.0, "chin_drop": 3.0, "brow_ridge": 1.0, "cheekbone": 1.5, "lip_fullness": -0.5},
    "c": {"eye_y": -3.0, "mouth_y": 3.0, "eye_half_spacing": -2.0, "nose_height": 3.0, "profile_radius": 30.0,
          "head_radius": 6.0, "chin_drop": -3.0, "nose_width": 1.5, "mouth_half_width": 2.0, "muzzle": 2.0},
}
_FAMILY_SPREAD = {
    "b": {"half_width": 0.6, "half_height": 0.6, "head_radius": 0.6, "nose_height": 0.6, "eye_y": 1.8,
          "mouth_y": 1.8, "eye_half_spacing": 1.8, "chin_drop": 1.8, "mouth_half_width": 1.8, "cheekbone": 1.5,
          "chin": 1.5},
    "c": {"nose_width": 1.8, "lip_fullness": 1.8, "muzzle": 1.6, "eye_depth": 1.8, "brow_ridge": 1.5,
          "jaw_ratio": 1.8, "bridge_height": 1.6, "half_width": 1.3},
}
_COSINE_ORDER = 4  # family b: cosine modes cos(p pi u) cos(q pi v), p, q < 4, over the face's bounding box
_PLANE_WAVES = 6  # family c: plane waves per field, wavelengths in _WAVELENGTH_MM
_WAVELENGTH_MM = (40.0, 120.0)
_HOLE_SITES = ("eye", "nostril", "hairline", "chin", "anywhere")
_HOLE_SITE_WEIGHTS = np.array([0.3, 0.2, 0.25, 0.1, 0.15])
_BND_STYLES = ("%.9g", "%.6f")
_BND_STYLE_WEIGHTS = np.array([0.83, 0.17])  # share of each style in the real BU-4DFE landmark release
_MODEL_CACHE_SIZE = 4
_FIELD_SHIFT_MM = 8.0  # vertical shift of an AU field per unit of SyntheticConfig.au_field_variation

# Purposes that key the random streams.
(_STREAM_GENDERS, _STREAM_SUBJECT, _STREAM_IDENTITY, _STREAM_STYLE, _STREAM_SCAN, _STREAM_SEQUENCE,
 _STREAM_FILE_STYLE, _STREAM_TRAITS, _STREAM_FAMILY) = range(9)


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the synthetic benchmark; the defaults give the hard benchmark.

    The defaults aim at the difficulty of real scans, measured with the baselines of ``benchmarks/bench_synthetic.py``
    on intensities 03-04, 40 training and 20 test subjects, with family a alone (generator version 1): logistic
    regression on frontal depth maps scores about 53 % and its small CNN (40 epochs) about 59 %, where the generator
    of commit 2233e8f scored 64 % and 75 %; on scans from a real face model, a depth-map regression scored 61.5 % and
    a small CNN 75 % with 54 training subjects. Without resting expressions the CNN still scores about 60 %, but
    happiness becomes easy and fear is mistaken for sadness; with them, 88 % of each expression lies in the identity
    subspace (0.49 without, :func:`identity_subspace_fraction`) and happiness is confused too.

    ``(low, high)`` pairs are sampled uniformly. Identity and style knobs are drawn once per subject; acquisition
    knobs once per scan (for 4D: crop and holes once per sequence, pose drifting, noise per frame).

    Attributes:
        seed: root of every random stream.
        identity_scale: multiplies every identity standard deviation (0 gives near-identical subjects).
        shape_noise_mm: amplitude of the low-frequency random bumps on each identity.
        shape_family: ``"a"``, ``"b"`` or ``"c"``, three families of identity shape (feature placement, bump
            basis, mesh triangulation), or ``"a+b"``: each subject from family a or b, so that a model learns
            expression rather than one family; pretrain on some and test on another to measure transfer (see
            ``transfer_target``).
        resting_expression_sigma: standard deviation of each subject's resting expression, a neutral face that
            carries its own AU activations (someone who looks a bit sad or angry at rest): brow, lid and chin AUs
            at this sigma, the others at half of it, mouth opening only opening. Its scans' AU labels leave it
            out. It puts expression directions inside identity variation (:func:`identity_subspace_fraction`).
        grid_spacing_mm: mesh vertex spacing per subject (the default gives about 3-5k vertices).
        female_fraction: share of female subjects.
        intensity_scales: AU scale of intensities 01..04 (increasing; 01 is close to neutral).
        intensity_jitter: per-scan relative jitter of the overall scale and of each AU.
        expressivity_sigma: per-subject log-normal gain on all AUs.
        au_gain_sigma: per-subject log-normal gain of each AU.
        optional_au_drop_prob: chance that a subject's style omits each optional prototype AU (a smile without AU6).
        extra_au_prob: chance that a subject's expression adds one AU outside its prototype.
        extra_au_weight: activation of that added AU.
        secondary_prob: chance that a subject's expression co-activates a second expression.
        secondary_weight: blend weight of that second expression.
        coactivation_prob: chance that each active AU of a subject's expression pulls in its usual partner
            (AU1 with AU2, AU6 with AU12, AU4 with AU7, AU17 with AU24...).
        coactivation_weight: the partner's activation relative to the AU that pulls it in.
        asymmetry_sigma: per-subject standard deviation of each AU's left/right imbalance: gains 1 - a on one side
            and 1 + a on the other (|a| <= 0.8).
        au_field_variation: per-subject variation of where and how each AU deforms the face (muscles and tissue
            differ between people): each AU's field stretched by log-normal factors of this sigma across and along
            the face, moved up or down by ``_FIELD_SHIFT_MM`` times it, and its displacement mixed between the axes
            by I + N(0, sigma^2) (:func:`_varied_action_unit_fields`). 0 keeps one template of each field for
            everybody; the AU labels are the same either way. Pretraining on it (0.3) did not help on the dev tree
            (``benchmarks/results/dev_experiments.json``, ``au_field_variation``).
        intensity_floor: per-subject range of the activation reached at intensity scale 0.
        intensity_ceiling: per-subject range of the activation reached at intensity scale 1 (apex): a subject's
            intensity ``s`` becomes ``floor + (ceiling - floor) * s``, so some people stay subtle.
        pose_sigma_deg: standard deviation of yaw, pitch and roll.
        scanner_offset_mm: per-subject range of the nose tip position in the scanner frame,
            ((x0, x1), (y0, y1), (z0, z1)); the scanner origin is not at the nose tip.
        translation_sigma_mm: per-scan jitter of the head position.
        noise_sigma_mm: per-scan standard deviation of the depth noise (in-plane noise is half of it).
        spike_prob: chance that a scan has spike outliers.
        max_spikes: largest number of spikes in a scan.
        spike_sigma_mm: standard deviation of a spike along the view direction.
        holes_per_scan: mean number of missing patches (Poisson) around eyes, nostrils, hairline, chin or anywhere.
        hole_radius_mm: radius range of a missing patch (hairline patches are twice as large).
        crop_scale: extent of the cropped face region relative to the subject's full face.
        sequence_frames: frame-count range of a 4D sequence.
    """

    seed: int = 0
    identity_scale: float = 1.0
    shape_noise_mm: float = 1.5
    shape_family: str = _MIXED_FAMILY
    resting_expression_sigma: float = 0.5
    grid_spacing_mm: tuple = (1.9, 2.5)
    female_fraction: float = 0.56
    intensity_scales: tuple = (0.15, 0.4, 0.7, 1.0)
    intensity_jitter: float = 0.08
    expressivity_sigma: float = 0.15
    au_gain_sigma: float = 0.2
    optional_au_drop_prob: float = 0.3
    extra_au_prob: float = 0.2
    extra_au_weight: tuple = (0.1, 0.3)
    secondary_prob: float = 0.5
    secondary_weight: tuple = (0.05, 0.25)
    coactivation_prob: float = 0.35
    coactivation_weight: tuple = (0.2, 0.5)
    asymmetry_sigma: float = 0.2
    au_field_variation: float = 0.0
    intensity_floor: tuple = (0.0, 0.1)
    intensity_ceiling: tuple = (0.7, 1.1)
    pose_sigma_deg: tuple = (7.0, 6.0, 3.0)
    scanner_offset_mm: tuple = ((-5.0, 15.0), (-30.0, 0.0), (-5.0, 10.0))
    translation_sigma_mm: float = 3.0
    noise_sigma_mm: tuple = (0.05, 0.3)
    spike_prob: float = 0.3
    max_spikes: int = 12
    spike_sigma_mm: float = 4.0
    holes_per_scan: float = 3.0
    hole_radius_mm: tuple = (3.0, 9.0)
    crop_scale: tuple = (0.85, 1.0)
    sequence_frames: tuple = (16, 32)

    def __post_init__(self):
        if self.shape_family not in _TRANSFER_FAMILY:
            raise ValueError(f"SyntheticConfig.shape_family must be one of {tuple(_TRANSFER_FAMILY)}, "
                             f"got {self.shape_family!r}")
        for name in ("female_fraction", "optional_au_drop_prob", "extra_au_prob", "secondary_prob", "spike_prob",
                     "coactivation_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SyntheticConfig.{name} must lie in [0, 1], got {getattr(self, name)!r}")
        for name in ("identity_scale", "shape_noise_mm", "expressivity_sigma", "au_gain_sigma",
                     "translation_sigma_mm", "spike_sigma_mm", "holes_per_scan", "max_spikes",
                     "resting_expression_sigma", "asymmetry_sigma", "au_field_variation"):
            if getattr(self, name) < 0:
                raise ValueError(f"SyntheticConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        pairs = {name: getattr(self, name) for name in (
            "grid_spacing_mm", "extra_au_weight", "secondary_weight", "noise_sigma_mm", "hole_radius_mm",
            "crop_scale", "sequence_frames", "coactivation_weight", "intensity_floor", "intensity_ceiling")}
        pairs.update({f"scanner_offset_mm[{axis}]": bounds for axis, bounds in enumerate(self.scanner_offset_mm)})
        for name, bounds in pairs.items():
            if len(bounds) != 2 or bounds[0] > bounds[1] or (bounds[0] < 0 and not name.startswith("scanner")):
                raise ValueError(f"SyntheticConfig.{name} must be a (low, high) pair with low <= high, got {bounds!r}")
        if self.grid_spacing_mm[0] < 0.5 or not 0.3 <= self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ValueError("SyntheticConfig needs grid_spacing_mm >= 0.5 and crop_scale within [0.3, 1]")
        if self.intensity_floor[1] >= self.intensity_ceiling[0]:
            raise ValueError("SyntheticConfig.intensity_floor must stay below intensity_ceiling")
        if self.sequence_frames[0] < 2:
            raise ValueError("SyntheticConfig.sequence_frames must allow at least 2 frames")
        scales = np.asarray(self.intensity_scales, dtype=np.float64)
        if scales.shape != (4,) or scales[0] <= 0 or np.any(np.diff(scales) <= 0):
            raise ValueError("SyntheticConfig.intensity_scales must be 4 increasing positive numbers")
        if not 0.0 <= self.intensity_jitter < 0.5:
            raise ValueError(f"SyntheticConfig.intensity_jitter must lie in [0, 0.5), got {self.intensity_jitter!r}")
        if len(self.pose_sigma_deg) != 3 or min(self.pose_sigma_deg) < 0:
            raise ValueError("SyntheticConfig.pose_sigma_deg must be 3 non-negative numbers (yaw, pitch, roll)")

    def clean(self) -> "SyntheticConfig":
        """The same subjects and expression styles without pose, position jitter, noise, spikes, holes or crop."""
        return replace(
            self, pose_sigma_deg=(0.0, 0.0, 0.0), translation_sigma_mm=0.0, noise_sigma_mm=(0.0, 0.0),
            spike_prob=0.0, holes_per_scan=0.0, crop_scale=(1.0, 1.0),
        )

    def transfer_target(self) -> "SyntheticConfig":
        """A clearly different generator to test transfer on: the shape family it never draws (c for a+b, and the
        other of a and b) and a mesh with vertices 1.4x closer (about twice as many), everything else (seed
        included) unchanged."""
        spacing = tuple(round(value / 1.4, 3) for value in self.grid_spacing_mm)
        return replace(self, shape_family=_TRANSFER_FAMILY[self.shape_family], grid_spacing_mm=spacing)


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=tuple(int(k) for k in keys)))


def _uniform(rng, bounds):
    return rng.uniform(bounds[0], bounds[1])


def _gauss(offset, sigma):
    return np.exp(-0.5 * (offset / sigma) ** 2)


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _segment_weight(x, y, start, end, width):
    """Gaussian falloff of the distance from each point (x, y) to the segment start-end."""
    direction = np.subtract(end, start)
    t = np.clip(((x - start[0]) * direction[0] + (y - start[1]) * direction[1]) / direction.dot(direction), 0, 1)
    distance_sq = (x - start[0] - t * direction[0]) ** 2 + (y - start[1] - t * direction[1]) ** 2
    return np.exp(-0.5 * distance_sq / width**2)


def _rotation(yaw_pitch_roll_deg) -> np.ndarray:
    """Rotation matrix for yaw about +y, then pitch about +x, then roll about +z (degrees)."""
    yaw, pitch, roll = np.deg2rad(yaw_pitch_roll_deg)
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    about_x = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    about_z = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return about_z @ about_x @ about_y


# ----------------------------------------------------------------------------------------------------------------
# Identity: shape parameters, face region, neutral height field and landmark layout (all in the face frame, where
# the nose tip sits near the origin).


def _sample_shape(rng, gender: str, race: str, age: float, family: str, config: SyntheticConfig) -> SimpleNamespace:
    names = list(_SHAPE_PRIOR)
    prior = np.array([_SHAPE_PRIOR[name] for name in names])
    factors = np.array([_GROUP_FACTORS[gender].get(n, 1.0) * _GROUP_FACTORS[race].get(n, 1.0) for n in names])
    shifts, spread = _FAMILY_SHIFTS.get(family, {}), _FAMILY_SPREAD.get(family, {})
    means = prior[:, 0] * factors + np.array([shifts.get(name, 0.0) for name in names])
    sds = prior[:, 1] * np.array([spread.get(name, 1.0) for name in names])
    values = means + sds * config.identity_scale * rng.standard_normal(len(names))
    values = np.where(means > 0, np.maximum(values, 0.4 * means), values)
    shape = SimpleNamespace(**dict(zip(names, values.tolist())), family=family)
    shape.jaw_ratio = min(shape.jaw_ratio, 0.95)
    shape.nose_height = max(shape.nose_height, shape.bridge_height + 6.0)
    shape.nasolabial_depth = 0.6 + 2.0 * (age - 18.0) / 52.0
    amplitude = config.shape_noise_mm * config.identity_scale
    if family == "b":
        order = np.arange(_COSINE_ORDER)
        shape.cosine = rng.normal(0.0, 1.0, (3, _COSINE_ORDER, _COSINE_ORDER)) * 2.0 * amplitude / (
            1.0 + order[:, None] + order[None, :])
        shape.cosine[:, 0, 0] = 0.0
        return shape
    if family == "c":
        angles = rng.uniform(0.0, np.pi, (3, _PLANE_WAVES))
        shape.wave_vectors = np.stack([np.cos(angles), np.sin(angles)], axis=-1) * 2.0 * np.pi / rng.uniform(
            *_WAVELENGTH_MM, (3, _PLANE_WAVES, 1))
        shape.wave_phases = rng.uniform(0.0, 2.0 * np.pi, (3, _PLANE_WAVES))
        shape.wave_heights = rng.normal(0.0, 0.6 * amplitude, (3, _PLANE_WAVES))  # about b's total amplitude
        return shape
    shape.bump_centers = np.column_stack([
        rng.uniform(-shape.half_width, shape.half_width, _SHAPE_BUMPS),
        shape.center_y + rng.uniform(-shape.half_height, shape.half_height, _SHAPE_BUMPS),
    ])
    shape.bump_sigmas = rng.uniform(12.0, 30.0, _SHAPE_BUMPS)
    shape.bump_heights = rng.normal(0.0, amplitude, _SHAPE_BUMPS)
    return shape


def _smooth_fields(x, y, shape) -> np.ndarray:
    """The identity's smooth displacement fields of families b and c, (3, N) for x, y and z in mm: low-order cosine
    modes over the face's bounding box (b) or plane waves (c)."""
    if shape.family == "c":
        phase = np.einsum("kwd,dn->kwn", shape.wave_vectors, np.stack([x, y])) + shape.wave_phases[..., None]
        return np.einsum("kw,kwn->kn", shape.wave_heights, np.sin(phase))
    order = np.pi * np.arange(_COSINE_ORDER)
    u = np.cos(np.clip(0.5 * (x / shape.half_width + 1.0), 0.0, 1.0)[:, None] * order)
    v = np.cos(np.clip(0.5 * ((y - shape.center_y) / shape.half_height + 1.0), 0.0, 1.0)[:, None] * order)
    return np.einsum("np,kpq,nq->kn", u, shape.cosine, v)


def _identity_bumps(x, y, shape) -> np.ndarray:
    """Low-frequency height (mm) of the identity: Gaussian bumps (family a) or the depth of its smooth fields."""
    if shape.family != "a":
        return _smooth_fields(x, y, shape)[2]
    distance = np.hypot(x[:, None] - shape.bump_centers[:, 0], y[:, None] - shape.bump_centers[:, 1])
    return (shape.bump_heights * _gauss(distance, shape.bump_sigmas)).sum(axis=1)


def _jaw_taper(y, shape):
    """Face half-width relative to its maximum: 1 above the face centre, narrowing to the jaw ratio at the chin."""
    return 1.0 - (1.0 - shape.jaw_ratio) * _smoothstep((shape.center_y - y) / shape.half_height)


def _face_radius(x, y, shape):
    """Normalised radius of the egg-shaped face region: 1 on the full face outline."""
    return np.hypot(x / (shape.half_width * _jaw_taper(y, shape)), (y - shape.center_y) / shape.half_height)


def _face_grid(shape, spacing: float):
    """Grid vertices (x, y) inside the face outline and their counter-clockwise triangles (each grid square split
    along its rising diagonal in shape family a, along the falling one in family b, alternately in family c)."""
    xs = np.arange(-shape.half_width, shape.half_width + spacing, spacing)
    ys = np.arange(shape.center_y - shape.half_height, shape.center_y + shape.half_height + spacing, spacing)
    grid_x, grid_y = np.meshgrid(xs, ys)
    inside = _face_radius(grid_x, grid_y, shape) <= 1.0
    index = np.full(grid_x.shape, -1, dtype=np.int64)
    index[inside] = np.arange(inside.sum())
    corner00, corner01 = index[:-1, :-1].ravel(), index[:-1, 1:].ravel()
    corner10, corner11 = index[1:, :-1].ravel(), index[1:, 1:].ravel()
    rising = [[corner00, corner01, corner11], [corner00, corner11, corner10]]
    falling = [[corner00, corner01, corner10], [corner01, corner11, corner10]]
    if shape.family == "c":
        row, column = np.indices((grid_x.shape[0] - 1, grid_x.shape[1] - 1))
        checker = ((row + column) % 2 == 0).ravel()
        halves = [np.where(checker, *pair) for pair in zip(rising, falling)]
    else:
        halves = falling if shape.family == "b" else rising
    triangles = np.concatenate([np.column_stack(half) for half in halves])
    triangles = triangles[(triangles >= 0).all(axis=1)]
    return grid_x[inside], grid_y[inside], triangles


def _feature_frame(x, y, shape):
    """Coordinates at which the features are evaluated: a slightly tilted face with a deviated nose."""
    return x - shape.nose_shift * _gauss(y - shape.eye_y / 2, 25.0), y - shape.tilt * x


def _neutral_height(x, y, shape) -> np.ndarray:
    """Height z (mm) of the neutral face; the nose tip is its maximum."""
    radius = shape.head_radius * _jaw_taper(y, shape)
    across = np.minimum(np.abs(x) / radius, 0.999)
    base = -radius * (1.0 - np.sqrt(1.0 - across**2)) - (y - shape.eye_y - 5.0) ** 2 / (2 * shape.profile_radius)

    fx, fy = _feature_frame(x, y, shape)
    ax = np.abs(fx)
    ex, ey, my, mw = shape.eye_half_spacing, shape.eye_y, shape.mouth_y, shape.mouth_half_width
    brow_y = ey + 13.0

    nasion = ey - 2.0
    along = fy / nasion
    ridge = np.where(
        fy < 0,
        shape.nose_height * _gauss(fy, 7.0),
        np.where(
            along <= 1.0,
            shape.bridge_height + (shape.nose_height - shape.bridge_height) * (1.0 - np.clip(along, 0, 1)) ** 1.3,
            shape.bridge_height * _gauss(fy - nasion, 8.0),
        ),
    )
    ridge_width = shape.nose_width * (1.0 - 0.35 * np.clip(along, 0.0, 1.0))
    features = ridge * _gauss(fx, ridge_width)
    features += 5.0 * _gauss(ax - shape.ala_spacing, 4.5) * _gauss(fy + 6.0, 4.5)
    features -= 3.0 * _gauss(ax - 0.5 * shape.ala_spacing, 2.5) * _gauss(fy + 9.0, 2.5)
    features -= shape.eye_depth * _gauss(ax - ex, 12.0) * _gauss(fy - ey, 9.0)
    features += 0.35 * shape.eye_depth * _gauss(ax - ex, 7.0) * _gauss(fy - ey, 4.0)
    features -= 1.5 * np.exp(-(((ax - ex) / 12.0) ** 4)) * _gauss(fy - ey, 1.5)
    features += shape.brow_ridge * _gauss(ax - ex, 20.0) * _gauss(fy - brow_y, 5.0)
    features += 0.7 * shape.brow_ridge * _gauss(fx, 12.0) * _gauss(fy - brow_y + 5.0, 7.0)
    features += shape.cheekbone * _gauss(ax - ex - 12.0, 13.0) * _gauss(fy - ey + 22.0, 10.0)
    features += shape.muzzle * _gauss(fx, 30.0) * _gauss(fy - my, 18.0)
    features -= 0.8 * _gauss(fx, 3.0) * _gauss(fy - my - 10.0, 5.0)
    features += shape.lip_fullness * _gauss(fx, 0.75 * mw) * _gauss(fy - my - 4.0, 3.5)
    features += 1.1 * shape.lip_fullness * _gauss(fx, 0.65 * mw) * _gauss(fy - my + 5.0, 4.0)
    features -= 1.5 * np.exp(-((fx / mw) ** 4)) * _gauss(fy - my, 2.0)
    features -= 2.0 * _gauss(fx, 15.0) * _gauss(fy - my + 13.0, 4.0)
    features += shape.chin * _gauss(fx, 16.0) * _gauss(fy - my + shape.chin_drop, 10.0)
    features -= shape.nasolabial_depth * _nasolabial_fold(ax, fy, shape)
    features *= 1.0 + shape.side_gain * x / shape.half_width

    return base + features + _identity_bumps(x, y, shape)


def _nasolabial_fold(ax, y, shape):
    start = (shape.ala_spacing + 2.0, -3.0)
    end = (shape.mouth_half_width + 6.0, shape.mouth_y - 8.0)
    return _segment_weight(ax, y, start, end, 3.0)


def _landmark_layout(shape) -> np.ndarray:
    """(83, 2) positions of the BU 83-point scheme on the neutral face.

    Eyes start at the outer corner and run over the upper lid; brows run inner to outer along the upper edge and
    back along the lower one; the nose runs from the x<0 side of the bridge down around the ala to the nostrils
    and back up the other side; the mouth is 12 outer-lip points from the x<0 corner over the upper lip, then 8
    inner-lip points; the contour runs from the x<0 temple round the chin to the other temple.
    """
    ex, ey, my, mw = shape.eye_half_spacing, shape.eye_y, shape.mouth_y, shape.mouth_half_width
    theta = np.deg2rad(np.arange(8) * 45.0)
    eye = np.column_stack([ex + 13.0 * np.cos(theta), ey + 4.5 * np.sin(theta)])
    along = np.linspace(0.0, 1.0, 5)
    brow_x = ex - 16.0 + 32.0 * along
    brow_y = ey + 13.0 + 2.5 * np.sin(np.pi * along)
    brow = np.column_stack([np.r_[brow_x, brow_x[::-1]], np.r_[brow_y + 2.5, brow_y[::-1] - 2.5]])
    nw, ala = shape.nose_width, shape.ala_spacing
    nose_side = np.array([
        [-0.6 * nw, ey - 5.0], [-0.8 * nw, 0.5 * ey], [-ala, 0.0],
        [-ala - 2.0, -5.0], [-ala + 2.0, -9.0], [-4.0, -11.0],
    ])
    nose = np.vstack([nose_side, nose_side[::-1] * [-1.0, 1.0]])
    upper = np.deg2rad([180.0, 150.0, 120.0, 90.0, 60.0, 30.0, 0.0])
    lower = np.deg2rad([-30.0, -60.0, -90.0, -120.0, -150.0])
    outer = np.vstack([
        np.column_stack([mw * np.cos(upper), my + 7.0 * np.sin(upper)]),
        np.column_stack([mw * np.cos(lower), my + 9.0 * np.sin(lower)]),
    ])
    inner_x = np.array([-0.85, -0.4, 0.0, 0.4, 0.85, 0.4, 0.0, -0.4]) * mw
    inner_y = my + np.array([0.0, 2.0, 2.0, 2.0, 0.0, -2.0, -2.0, -2.0])
    mouth = np.vstack([outer, np.column_stack([inner_x, inner_y])])
    reach = 0.93 * shape.half_height
    top = np.arcsin(np.clip((ey - shape.center_y) / reach, -1.0, 1.0))
    phi = np.linspace(np.pi - top, 2.0 * np.pi + top, 15)
    contour_y = shape.center_y + reach * np.sin(phi)
    contour_x = 0.93 * shape.half_width * _jaw_taper(contour_y, shape) * np.cos(phi)
    mirror = [-1.0, 1.0]
    return np.vstack([
        eye * mirror, eye, brow * mirror, brow, nose, mouth, np.column_stack([contour_x, contour_y]),
    ])


# ----------------------------------------------------------------------------------------------------------------
# Action units: per-subject displacement fields (mm) at activation 1.


def _action_unit_fields(x, y, shape) -> np.ndarray:
    """Displacement of every AU in ``AU_LIST`` at activation 1, as an array (n_AU, N, 3)."""
    out = np.zeros((len(AU_LIST), x.size, 3))

    def add(au, weight, dx=0.0, dy=0.0, dz=0.0):
        field = out[_AU_INDEX[au]]
        field[:, 0] += weight * dx
        field[:, 1] += weight * dy
        field[:, 2] += weight * dz

    fx, fy = _feature_frame(x, y, shape)
    side, ax = np.tanh(fx / 6.0), np.abs(fx)
    ex, ey, my, mw = shape.eye_half_spacing, shape.eye_y, shape.mouth_y, shape.mouth_half_width
    brow_y, chin_y = ey + 13.0, my - shape.chin_drop

    upper_lid = _gauss(ax - ex, 10.0) * _gauss(fy - ey - 4.0, 4.0)
    lower_lid = _gauss(ax - ex, 10.0) * _gauss(fy - ey + 5.0, 3.5)
    upper_lip = _gauss(fx, 0.8 * mw) * _gauss(fy - my - 5.0, 5.0)
    lower_lip = _gauss(fx, 0.7 * mw) * _gauss(fy - my + 6.0, 5.0)
    corner = _gauss(ax - mw, 8.0) * _gauss(fy - my, 8.0)
    fold = _nasolabial_fold(ax, fy, shape)

    add(1, _gauss(ax - 14.0, 12.0) * _gauss(fy - brow_y - 3.0, 12.0), dy=6.0, dz=1.5)
    forehead = _gauss(fx, 20.0) * _gauss(fy - brow_y - 20.0, 15.0)
    add(1, forehead, dy=3.0)
    add(1, forehead * np.cos(2 * np.pi * (fy - brow_y) / 9.0), dz=0.8)
    outer_brow = _gauss(ax - ex - 8.0, 13.0) * _gauss(fy - brow_y, 12.0)
    add(2, outer_brow, dx=side, dy=6.0, dz=-0.5)
    add(2, outer_brow * _gauss(fy - brow_y - 12.0, 8.0) * np.cos(2 * np.pi * (fy - brow_y) / 9.0), dz=0.8)
    add(4, _gauss(ax - ex + 6.0, 16.0) * _gauss(fy - brow_y, 10.0), dx=-3.0 * side, dy=-4.5, dz=2.5)
    glabella = _gauss(fx, 7.0) * _gauss(fy - brow_y + 4.0, 7.0)
    add(4, glabella, dz=3.0)
    add(4, glabella * np.cos(2 * np.pi * fx / 8.0), dz=1.0)
    add(4, upper_lid, dy=-1.5)
    add(5, upper_lid, dy=3.5, dz=-2.0)
    add(6, _gauss(ax - ex - 4.0, 14.0) * _gauss(fy - ey + 18.0, 9.0), dy=4.0, dz=3.5)
    add(6, lower_lid, dy=2.0, dz=1.5)
    add(6, _gauss(ax - ex - 16.0, 5.0) * _gauss(fy - ey, 6.0), dz=-1.0)
    add(7, lower_lid, dy=2.5, dz=2.0)
    add(7, upper_lid, dy=-1.2)
    add(9, _gauss(ax - 9.0, 7.0) * _gauss(fy - ey + 12.0, 9.0), dy=3.0, dz=3.0)
    add(9, _gauss(ax - ex + 2.0, 10.0) * _gauss(fy - ey + 12.0, 6.0), dy=2.0, dz=2.0)
    add(9, _gauss(fx, 9.0) * _gauss(fy - ey + 2.0, 6.0) * (1.0 + 0.5 * np.cos(2 * np.pi * (fy - ey) / 6.0)), dz=2.5)
    add(9, _gauss(ax - 12.0, 12.0) * _gauss(fy - brow_y, 8.0), dy=-2.0)
    add(9, _gauss(ax - shape.ala_spacing, 6.0) * _gauss(fy + 6.0, 5.0), dy=3.0)
    add(9, upper_lip, dy=1.5)
    add(10, upper_lip, dy=4.5, dz=2.5)
    add(10, fold, dz=-2.5)
    add(12, corner, dx=6.0 * side, dy=7.0, dz=-2.5)
    add(12, _gauss(ax - mw - 12.0, 12.0) * _gauss(fy - my - 18.0, 12.0), dy=2.0, dz=3.5)
    add(12, fold, dz=-3.0)
    add(15, corner, dx=side, dy=-6.0, dz=-1.5)
    add(15, _gauss(ax - mw, 8.0) * _gauss(fy - my + 10.0, 6.0), dz=1.5)
    add(16, lower_lip, dy=-4.5, dz=2.5)
    add(17, _gauss(fx, 16.0) * _gauss(fy - chin_y - 5.0, 10.0), dy=4.0, dz=4.0)
    add(17, lower_lip, dy=2.5, dz=2.5)
    add(20, corner, dx=7.0 * side, dy=-1.0, dz=-1.5)
    add(20, _gauss(fx, 0.8 * mw) * _gauss(fy - my, 6.0), dz=-2.5)
    add(20, lower_lip, dy=-1.5)
    add(23, _gauss(fx, 0.9 * mw) * _gauss(fy - my, 7.0), dz=-3.0)
    add(23, corner, dx=-2.5 * side)
    add(24, upper_lip, dy=-2.0, dz=-1.5)
    add(24, lower_lip, dy=2.0, dz=-1.5)
    add(24, _gauss(fx, 0.8 * mw) * (_gauss(fy - my - 12.0, 5.0) + _gauss(fy - my + 13.0, 5.0)), dz=1.5)

    # Mouth opening: the lips spread apart across the mouth line, the mandible drops and the gap between the lips
    # (the mouth interior) recedes, since a height field cannot open a hole.
    across_mouth = np.exp(-((fx / (1.05 * mw)) ** 4))
    spread = np.tanh((fy - my) / 4.0) * _gauss(fy - my, 10.0) * across_mouth
    gap = _gauss(fy - my, 3.5) * across_mouth
    mandible = 0.5 * (1.0 - np.tanh((fy - my) / 2.5)) * _gauss(fx, 40.0)
    add(25, spread, dy=2.5)
    add(25, gap, dz=-5.0)
    add(26, mandible, dy=-11.0, dz=-3.0)
    add(26, gap, dz=-7.0)
    add(26, upper_lip, dy=1.0)
    add(27, mandible, dy=-20.0, dz=-6.0)
    add(27, gap, dz=-11.0)
    add(27, corner, dx=-4.0 * side)
    add(27, _gauss(ax - mw - 15.0, 12.0) * _gauss(fy - my - 5.0, 14.0), dz=-2.0)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Subjects, scans and sequences.


@dataclass
class _SubjectModel:
    """Everything about one subject that does not change between its scans."""

    meta: dict
    shape: SimpleNamespace
    neutral: np.ndarray  # (N, 3) neutral face (resting expression included) in the face frame
    triangles: np.ndarray  # (M, 3)
    basis: np.ndarray  # (n_AU, N, 3), left/right imbalance included
    landmark_index: np.ndarray  # (83,) vertex indices
    nose_tip: int
    pivot: np.ndarray  # head rotation centre in the face frame
    offset: np.ndarray  # face frame -> scanner frame translation
    style: np.ndarray  # (6, n_AU) apex AU activations of each emotion for this subject
    secondary: list  # per emotion: (code or None, weight)
    intensity_range: tuple  # (floor, ceiling): activation at intensity scale 0 and 1


def _expression_code(expression: str) -> str:
    if expression not in EXPRESSIONS:
        raise ValueError(f"unknown expression {expression!r}; expected one of {', '.join(EXPRESSIONS)}")
    return expression


def _prototype_vector(code: str) -> np.ndarray:
    vector = np.zeros(len(AU_LIST))
    core, optional = PROTOTYPES[code]
    for au, activation in {**core, **optional}.items():
        vector[_AU_INDEX[au]] = activation
    return vector


def _sample_style(rng, config: SyntheticConfig):
    """A subject's apex AU activations per emotion: gains, dropped and added AUs, co-activated expressions."""
    gains = np.exp(rng.normal(0.0, config.expressivity_sigma) + rng.normal(0.0, config.au_gain_sigma, len(AU_LIST)))
    style = np.zeros((len(EMOTION_CODES), len(AU_LIST)))
    secondary = []
    for row, code in enumerate(EMOTION_CODES):
        core, optional = PROTOTYPES[code]
        kept = {au: a for au, a in optional.items() if rng.random() >= config.optional_au_drop_prob}
        for au, activation in {**core, **kept}.items():
            style[row, _AU_INDEX[au]] = activation
        _coactivate(rng, style[row], config)
        outside = [au for au in AU_LIST if au not in core and au not in optional]
        if rng.random() < config.extra_au_prob:
            style[row, _AU_INDEX[outside[rng.integers(len(outside))]]] += _uniform(rng, config.extra_au_weight)
        if rng.random() < config.secondary_prob:
            other = [c for c in EMOTION_CODES if c != code][rng.integers(len(EMOTION_CODES) - 1)]
            weight = _uniform(rng, config.secondary_weight)
            style[row] += weight * _prototype_vector(other)
            secondary.append((other, weight))
        else:
            secondary.append((None, 0.0))
    return style * gains, secondary


def _coactivate(rng, activations, config: SyntheticConfig) -> None:
    """Let each active AU pull in its usual partner (``_COACTIVATION``) with ``coactivation_prob``, in place."""
    leaders = [au for au in AU_LIST if activations[_AU_INDEX[au]] > 0 and au in _COACTIVATION]
    pulled = rng.random(len(leaders)) < config.coactivation_prob
    weights = rng.uniform(*config.coactivation_weight, len(leaders))
    for au, chosen, weight in zip(leaders, pulled, weights):
        partner = _AU_INDEX[_COACTIVATION[au]]
        if chosen:
            activations[partner] = max(activations[partner], weight * activations[_AU_INDEX[au]])


def _sample_traits(rng, config: SyntheticConfig) -> SimpleNamespace:
    """A subject's resting expression (AU activations of the neutral face), AU imbalance, intensity range and AU
    field warps (None without ``au_field_variation``; drawn last, so that the others do not depend on it)."""
    scale = np.array([_RESTING_SCALE.get(au, 1.0) for au in AU_LIST])
    resting = rng.normal(0.0, config.resting_expression_sigma, len(AU_LIST)) * scale
    one_sided = [_AU_INDEX[au] for au in _RESTING_ONE_SIDED]
    resting[one_sided] = np.abs(resting[one_sided])
    asymmetry = np.clip(rng.normal(0.0, config.asymmetry_sigma, len(AU_LIST)), -0.8, 0.8)
    intensity_range = (_uniform(rng, config.intensity_floor), _uniform(rng, config.intensity_ceiling))
    field_warps = None
    if config.au_field_variation > 0:
        sigma, count = config.au_field_variation, len(AU_LIST)
        field_warps = SimpleNamespace(
            stretch=np.exp(rng.normal(0.0, sigma, (count, 2))), shift=rng.normal(0.0, _FIELD_SHIFT_MM * sigma, count),
            mix=np.eye(3) + rng.normal(0.0, sigma, (count, 3, 3)),
        )
    return SimpleNamespace(resting=resting, asymmetry=asymmetry, intensity_range=intensity_range,
                           field_warps=field_warps)  # fmt: skip


def _varied_action_unit_fields(x, y, shape, warps) -> np.ndarray:
    """``_action_unit_fields`` of a person whose AUs act over their own extent and place: AU k's field taken at
    (x / sx, c + (y - c) / sy - shift) with c the height of its template field's centre, its displacement
    multiplied by its mix matrix (``warps``: stretch (n_AU, 2), shift (n_AU,), mix (n_AU, 3, 3))."""
    template = _action_unit_fields(x, y, shape)
    weight = np.linalg.norm(template, axis=2)
    centre_y = (weight * y).sum(axis=1) / weight.sum(axis=1)
    out = np.empty_like(template)
    for k, ((stretch_x, stretch_y), shift, mix) in enumerate(zip(warps.stretch, warps.shift, warps.mix)):
        warped_y = centre_y[k] + (y - centre_y[k]) / stretch_y - shift
        out[k] = _action_unit_fields(x / stretch_x, warped_y, shape)[k] @ mix.T
    return out


def _identity_surface(x, y, shape, traits):
    """The neutral face at points (x, y), resting expression included, and the AU fields there, each AU weighted
    by 1 - a on the subject's x < 0 side and 1 + a on the other (a: the subject's imbalance of that AU)."""
    if traits.field_warps is None:
        basis = _action_unit_fields(x, y, shape)
    else:
        basis = _varied_action_unit_fields(x, y, shape, traits.field_warps)
    side = np.tanh(_feature_frame(x, y, shape)[0] / 10.0)
    basis *= (1.0 + traits.asymmetry[:, None] * side[None, :])[..., None]
    neutral = np.column_stack([x, y, _neutral_height(x, y, shape)]) + np.tensordot(traits.resting, basis, axes=1)
    if shape.family != "a":  # features also move within the face plane
        neutral[:, :2] += _smooth_fields(x, y, shape)[:2].T
    return neutral, basis


def _compact(vertices, triangles, keep):
    """Drop removed vertices, the triangles touching them and any vertex no triangle uses any more."""
    triangles = triangles[keep[triangles].all(axis=1)]
    used = np.zeros(len(vertices), dtype=bool)
    used[triangles] = True
    new_index = np.cumsum(used) - 1
    return vertices[used], new_index[triangles], used, new_index


def _surviving_index(vertices_full, used, new_index, wanted):
    """Index in the compacted mesh of each wanted vertex, or of the nearest surviving vertex if it was removed."""
    wanted = np.atleast_1d(wanted)
    result = new_index[wanted].copy()
    missing = ~used[wanted]
    if missing.any():
        survivors = vertices_full[used]
        distance = ((vertices_full[wanted[missing], None, :] - survivors[None]) ** 2).sum(axis=-1)
        result[missing] = distance.argmin(axis=1)
    return result


class SyntheticFaceGenerator:
    """Generates synthetic subjects, static scans (BU-3DFE style) and 4D sequences (BU-4DFE style).

    Args:
        config: the benchmark knobs; ``SyntheticConfig()`` when omitted.

    Subjects are addressed by a 0-based index. Results depend only on the seed and the requested keys.
    """

    def __init__(self, config: Optional[SyntheticConfig] = None):
        self.config = config if config is not None else SyntheticConfig()
        self._models = OrderedDict()

    def subject(self, index: int) -> dict:
        """Metadata of subject ``index``: ids in both datasets' styles, gender (F/M), race code and age."""
        if index < 0:
            raise ValueError(f"subject index must be >= 0, got {index}")
        female = _rng(self.config.seed, _STREAM_GENDERS).random(index + 1) < self.config.female_fraction
        gender = "F" if female[index] else "M"
        rank = int((female == female[index]).sum())
        rng = _rng(self.config.seed, _STREAM_SUBJECT, index)
        race = RACES[rng.choice(len(RACES), p=_RACE_WEIGHTS)]
        age = int(round(18 + 52 * rng.beta(1.5, 4.0)))
        return {
            "index": index, "bu3dfe_id": f"{gender}{rank:04d}", "bu4dfe_id": f"{gender}{rank:03d}",
            "gender": gender, "race": race, "age": age,
        }

    def _identity(self, index: int) -> SimpleNamespace:
        """Every per-subject draw: metadata, shape, mesh spacing, scanner position, traits and expression style."""
        config = self.config
        meta = self.subject(index)
        family = config.shape_family
        if family == _MIXED_FAMILY:
            family = str(_rng(config.seed, _STREAM_FAMILY, index).choice(_MIXED_MEMBERS))
        rng = _rng(config.seed, _STREAM_IDENTITY, index)
        shape = _sample_shape(rng, meta["gender"], meta["race"], meta["age"], family, config)
        spacing = _uniform(rng, config.grid_spacing_mm)
        scanner_target = np.array([_uniform(rng, bounds) for bounds in config.scanner_offset_mm])
        style, secondary = _sample_style(_rng(config.seed, _STREAM_STYLE, index), config)
        return SimpleNamespace(
            meta=meta, shape=shape, spacing=spacing, scanner_target=scanner_target, style=style, secondary=secondary,
            traits=_sample_traits(_rng(config.seed, _STREAM_TRAITS, index), config),
        )

    def _model(self, index: int) -> _SubjectModel:
        if index in self._models:
            self._models.move_to_end(index)
            return self._models[index]
        identity = self._identity(index)
        shape = identity.shape
        x, y, triangles = _face_grid(shape, identity.spacing)
        neutral, basis = _identity_surface(x, y, shape, identity.traits)
        nose_tip = int(np.argmax(neutral[:, 2]))
        tip_position = neutral[nose_tip]
        layout = _landmark_layout(shape)  # landmarks sit on the tissue, so they follow the resting expression
        landmark_index = ((layout[:, None, :] - np.column_stack([x, y])[None]) ** 2).sum(axis=-1).argmin(axis=1)
        model = _SubjectModel(
            meta=identity.meta, shape=shape, neutral=neutral, triangles=triangles, basis=basis,
            landmark_index=landmark_index, nose_tip=nose_tip, pivot=tip_position + np.array([0.0, -10.0, -95.0]),
            offset=identity.scanner_target - tip_position, style=identity.style, secondary=identity.secondary,
            intensity_range=identity.traits.intensity_range,
        )
        self._models[index] = model
        if len(self._models) > _MODEL_CACHE_SIZE:
            self._models.popitem(last=False)
        return model

    def _keep_mask(self, model: _SubjectModel, rng) -> np.ndarray:
        """Crop the face region and cut random holes (around eyes, nostrils, hairline, chin or anywhere)."""
        config, shape, xy = self.config, model.shape, model.neutral[:, :2]
        keep = _face_radius(xy[:, 0], xy[:, 1], shape) <= _uniform(rng, config.crop_scale)
        count = rng.poisson(config.holes_per_scan)
        sites = rng.choice(len(_HOLE_SITES), size=count, p=_HOLE_SITE_WEIGHTS)
        left_or_right = rng.choice([-1.0, 1.0], size=count)
        anywhere = xy[rng.integers(len(xy), size=count)]
        top, bottom = shape.center_y + 0.95 * shape.half_height, shape.center_y - 0.95 * shape.half_height
        candidates = np.stack([
            np.column_stack([left_or_right * shape.eye_half_spacing, np.full(count, shape.eye_y)]),
            np.column_stack([left_or_right * 0.5 * shape.ala_spacing, np.full(count, -9.0)]),
            np.column_stack([rng.uniform(-0.5, 0.5, count) * shape.half_width, np.full(count, top)]),
            np.column_stack([np.zeros(count), np.full(count, bottom)]),
            anywhere,
        ])
        centers = candidates[sites, np.arange(count)] + rng.normal(0.0, 3.0, (count, 2))
        radii = rng.uniform(*config.hole_radius_mm, count) * np.where(sites == _HOLE_SITES.index("hairline"), 2, 1)
        inside = ((xy[None] - centers[:, None]) ** 2).sum(axis=-1) < radii[:, None] ** 2
        return keep & ~inside.any(axis=0)

    def _pose(self, rng):
        return rng.normal(0.0, self.config.pose_sigma_deg), rng.normal(0.0, self.config.translation_sigma_mm, 3)

    def _realise(self, model, aus, pose_deg, translation, keep, noise_sigma, rng):
        """Deform, pose, add scanner noise and spikes, drop removed vertices: the scan and its landmark indices."""
        vertices = model.neutral + np.tensordot(aus, model.basis, axes=1)
        vertices = (vertices - model.pivot) @ _rotation(pose_deg).T + model.pivot + model.offset + translation
        vertices += rng.normal(0.0, 1.0, vertices.shape) * (noise_sigma * np.array([0.5, 0.5, 1.0]))
        if rng.random() < self.config.spike_prob and self.config.max_spikes > 0:
            spikes = rng.integers(len(vertices), size=rng.integers(1, self.config.max_spikes + 1))
            vertices[spikes, 2] += rng.normal(0.0, self.config.spike_sigma_mm, len(spikes))
        kept, triangles, used, new_index = _compact(vertices, model.triangles, keep)
        landmark_index = _surviving_index(vertices, used, new_index, model.landmark_index)
        nose_tip = int(_surviving_index(vertices, used, new_index, model.nose_tip)[0])
        scan = FaceScan(
            vertices=kept.astype(np.float32), faces=triangles.astype(np.int64),
            landmarks=kept[landmark_index].astype(np.float32), landmark_indices=landmark_index,
            metadata={"format": "synthetic"},
        )
        return scan, landmark_index, nose_tip

    def scan(self, subject: int, expression: str, intensity: int):
        """One static scan: ``(FaceScan, info)``.

        ``expression`` is a BU code (``"HA"``...; ``"NE"`` with intensity 0, the others with intensity 1-4). ``info``
        holds ``aus`` (activations in ``AU_NAMES`` order), ``expression``, ``intensity``, the subject metadata,
        ``pose_deg`` (yaw, pitch, roll), ``secondary_expression`` and its weight, ``landmark_indices`` and
        ``nose_tip_index`` (vertex indices into the scan).
        """
        code = _expression_code(expression)
        if (code == "NE") != (intensity == 0) or not 0 <= intensity <= 4:
            raise ValueError(f"intensity {intensity!r} is invalid for {code}: neutral takes 0, the others 1-4")
        model = self._model(subject)
        config = self.config
        rng = _rng(config.seed, _STREAM_SCAN, subject, list(EXPRESSIONS).index(code), intensity)
        aus = np.zeros(len(AU_LIST))
        secondary = (None, 0.0)
        if code != "NE":
            row = EMOTION_CODES.index(code)
            jitter = 1.0 + config.intensity_jitter * rng.uniform(-1.0, 1.0, len(AU_LIST) + 1)
            floor, ceiling = model.intensity_range
            scale = floor + (ceiling - floor) * config.intensity_scales[intensity - 1]
            aus = scale * jitter[0] * jitter[1:] * model.style[row]
            secondary = model.secondary[row]
        pose_deg, translation = self._pose(rng)
        keep = self._keep_mask(model, rng)
        noise_sigma = _uniform(rng, config.noise_sigma_mm)
        scan, landmark_index, nose_tip = self._realise(model, aus, pose_deg, translation, keep, noise_sigma, rng)
        info = {
            **model.meta, "subject": model.meta["bu3dfe_id"], "expression": code, "intensity": intensity,
            "aus": aus.astype(np.float32), "pose_deg": pose_deg, "secondary_expression": secondary[0],
            "secondary_weight": secondary[1], "landmark_indices": landmark_index, "nose_tip_index": nose_tip,
        }
        return scan, info

    def sequence(self, subject: int, expression: str, num_frames: Optional[int] = None):
        """One 4D sequence with an onset-apex-offset time course: ``(list of FaceScan, info)``.

        ``info`` holds ``aus`` (T, n_AU), ``intensity_curve`` (T,) in [0, 1], ``apex_frame``, ``pose_deg`` (T, 3),
        ``landmark_indices`` (T, 83), the subject metadata and the expression. Crop and holes stay fixed over the
        sequence; pose drifts smoothly; noise is drawn per frame.
        """
        code = _expression_code(expression)
        if code == "NE":
            raise ValueError("sequences exist for the six emotions only, not NE")
        model = self._model(subject)
        config = self.config
        rng = _rng(config.seed, _STREAM_SEQUENCE, subject, EMOTION_CODES.index(code))
        drawn_frames = int(rng.integers(config.sequence_frames[0], config.sequence_frames[1] + 1))
        frames = drawn_frames if num_frames is None else int(num_frames)
        if frames < 2:
            raise ValueError(f"a sequence needs at least 2 frames, got {frames}")
        curve = self._intensity_curve(rng, frames)
        jitter = 1.0 + config.intensity_jitter * rng.uniform(-1.0, 1.0, len(AU_LIST))
        apex = model.intensity_range[1] * jitter * model.style[EMOTION_CODES.index(code)]
        aus = curve[:, None] * apex[None]
        drift = _smoothstep(np.linspace(0.0, 1.0, frames))[:, None]
        (pose_start, shift_start), (pose_end, shift_end) = self._pose(rng), self._pose(rng)
        poses = pose_start + drift * (pose_end - pose_start)
        shifts = shift_start + drift * (shift_end - shift_start)
        keep = self._keep_mask(model, rng)
        noise_sigma = _uniform(rng, config.noise_sigma_mm)
        scans, landmarks = [], []
        for frame in range(frames):
            scan, landmark_index, _ = self._realise(
                model, aus[frame], poses[frame], shifts[frame], keep, noise_sigma, rng
            )
            scans.append(scan)
            landmarks.append(landmark_index)
        info = {
            **model.meta, "subject": model.meta["bu4dfe_id"], "expression": code, "aus": aus.astype(np.float32),
            "intensity_curve": curve, "apex_frame": int(np.argmax(curve)), "pose_deg": poses,
            "secondary_expression": model.secondary[EMOTION_CODES.index(code)][0],
            "landmark_indices": np.stack(landmarks),
        }
        return scans, info

    @staticmethod
    def _intensity_curve(rng, frames: int) -> np.ndarray:
        """Neutral, onset ramp, apex plateau, offset ramp to a small residual, neutral tail; peak in [0.75, 1]."""
        lengths = rng.dirichlet([1.5, 3.0, 3.0, 3.0, 1.5]) * (frames - 1)
        onset_start, apex_start, apex_end, offset_end = np.cumsum(lengths)[:4]
        t = np.arange(frames, dtype=np.float64)
        residual = rng.uniform(0.0, 0.08)
        rise = _smoothstep((t - onset_start) / max(apex_start - onset_start, 1e-6))
        fall = _smoothstep((t - apex_end) / max(offset_end - apex_end, 1e-6))
        return rng.uniform(0.75, 1.0) * rise * (1.0 - (1.0 - residual) * fall)


# ----------------------------------------------------------------------------------------------------------------
# How far expression hides in identity: the subspace measure.


def _identity_samples(config: SyntheticConfig, subjects, grid_points: int = 32):
    """Subjects sampled at corresponding points (a grid in face-normalised coordinates, the same facial location
    on everyone): neutral faces (n, 3P), apex expression displacements (n, 6, 3P) and AU fields (n, n_AU, 3P)."""
    generator = SyntheticFaceGenerator(config)
    u, v = (axis.ravel() for axis in np.meshgrid(*[np.linspace(-0.9, 0.9, grid_points)] * 2))
    u, v = u[np.hypot(u, v) <= 0.9], v[np.hypot(u, v) <= 0.9]
    neutrals, expressions, fields = [], [], []
    for index in subjects:
        identity = generator._identity(index)
        shape = identity.shape
        y = shape.center_y + v * shape.half_height
        neutral, basis = _identity_surface(u * shape.half_width * _jaw_taper(y, shape), y, shape, identity.traits)
        neutrals.append(neutral.ravel())
        fields.append(basis.reshape(len(AU_LIST), -1))
        expressions.append(identity.style @ fields[-1])
    return np.stack(neutrals), np.stack(expressions), np.stack(fields)


def _principal_components(samples: np.ndarray, variance: float = 0.99, rank: Optional[int] = None) -> np.ndarray:
    """Orthonormal rows spanning the principal components of ``samples`` (n, D) about their mean: the first
    ``rank``, or as many as explain ``variance`` of their variation."""
    _, singular, rows = np.linalg.svd(samples - samples.mean(axis=0), full_matrices=False)
    if rank is None:
        explained = np.cumsum(singular**2) / np.sum(singular**2)
        rank = int(np.searchsorted(explained, variance)) + 1
    return rows[:rank]


def _share_inside(components: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Share of each vector's squared norm that lies in the span of the orthonormal rows ``components``."""
    return ((vectors @ components.T) ** 2).sum(axis=-1) / (vectors**2).sum(axis=-1)


def identity_subspace_fraction(config: Optional[SyntheticConfig] = None, num_subjects: int = 200, held_out: int = 40,
                               grid_points: int = 32, variance: float = 0.99) -> dict:
    """How much of each expression lies in the identity subspace (88-92 % of each blendshape in a real face model).

    The identity subspace is spanned by the principal components explaining ``variance`` of the neutral faces of
    subjects ``0 .. num_subjects - 1``, sampled at corresponding points (by default, like a morphable model built
    from 200 scans and truncated at 99 % of their variance). Each of ``held_out`` further subjects'
    apex expression displacements (its own style, left/right imbalance included) and AU fields are projected on
    it. Returns the mean share of their squared norm inside: ``mean`` over the six emotions, ``expressions`` per
    emotion code, ``aus`` per AU name, and ``components``, the subspace's dimension.
    """
    config = config if config is not None else SyntheticConfig()
    components = _principal_components(_identity_samples(config, range(num_subjects), grid_points)[0], variance)
    _, expressions, fields = _identity_samples(config, range(num_subjects, num_subjects + held_out), grid_points)
    by_expression = _share_inside(components, expressions).mean(axis=0)
    by_au = _share_inside(components, fields).mean(axis=0)
    return {
        "mean": round(float(by_expression.mean()), 4), "components": len(components),
        "expressions": dict(zip(EMOTION_CODES, by_expression.round(4).tolist())),
        "aus": dict(zip(AU_NAMES, by_au.round(4).tolist())),
    }


# ----------------------------------------------------------------------------------------------------------------
# Writing the BU-3DFE and BU-4DFE trees.


def _label_row(meta, aus) -> list:
    return [meta["gender"], meta["race"], meta["age"], *(f"{value:.4f}" for value in aus)]


def _write_bu3dfe_subject(task) -> list:
    """Write the 25 models of one subject; return their label rows."""
    root, config, index = task
    generator = SyntheticFaceGenerator(config)
    meta = generator.subject(index)
    folder = os.path.join(root, meta["bu3dfe_id"])
    os.makedirs(folder, exist_ok=True)
    rows = []
    for code, intensity in [("NE", 0)] + [(c, level) for c in EMOTION_CODES for level in range(1, 5)]:
        scan, info = generator.scan(index, code, intensity)
        stem = f"{meta['bu3dfe_id']}_{code}{intensity:02d}{meta['race']}_F3D"
        write_wrl(os.path.join(folder, stem + ".wrl"), scan.vertices, scan.faces, flavor="bu3dfe")
        write_bnd(os.path.join(folder, stem + ".bnd"), info["landmark_indices"], scan.landmarks)
        rows.append([f"{meta['bu3dfe_id']}/{stem}.wrl", meta["bu3dfe_id"], code, intensity,
                     *_label_row(meta, info["aus"])])
    return rows


def _write_bu4dfe_subject(task) -> list:
    """Write the six sequences of one subject, frames and landmark release; return per-frame label rows."""
    root, config, index = task
    generator = SyntheticFaceGenerator(config)
    meta = generator.subject(index)
    rows = []
    for row, code in enumerate(EMOTION_CODES):
        scans, info = generator.sequence(index, code)
        relative = os.path.join(meta["bu4dfe_id"], BU4DFE_FOLDERS[code])
        mesh_folder = os.path.join(root, relative)
        landmark_folder = os.path.join(root, BU4DFE_LANDMARK_DIR, relative)
        os.makedirs(mesh_folder, exist_ok=True)
        os.makedirs(landmark_folder, exist_ok=True)
        style_rng = _rng(generator.config.seed, _STREAM_FILE_STYLE, index, row)
        number_format = _BND_STYLES[style_rng.choice(len(_BND_STYLES), p=_BND_STYLE_WEIGHTS)]
        for frame, scan in enumerate(scans):
            write_wrl(os.path.join(mesh_folder, f"{frame:03d}.wrl"), scan.vertices, scan.faces, flavor="bu4dfe")
            write_bnd(os.path.join(landmark_folder, f"{frame:03d}.bnd"), info["landmark_indices"][frame],
                      scan.landmarks, number_format=number_format)
            rows.append([f"{relative}/{frame:03d}.wrl".replace(os.sep, "/"), meta["bu4dfe_id"], code, frame,
                         f"{info['intensity_curve'][frame]:.4f}", *_label_row(meta, info["aus"][frame])])
    return rows


def _run_subjects(worker, root, num_subjects, config, num_workers, progress, description) -> list:
    """Run ``worker`` for every subject, in worker processes when ``num_workers > 1``; rows in subject order."""
    if num_subjects < 1:
        raise ValueError(f"num_subjects must be >= 1, got {num_subjects}")
    config = config if config is not None else SyntheticConfig()
    tasks = [(str(root), config, index) for index in range(num_subjects)]
    os.makedirs(root, exist_ok=True)
    bar = tqdm(total=num_subjects, desc=description, unit="subject", disable=not progress)
    rows = []
    with bar:
        if num_workers > 1:
            with ProcessPoolExecutor(max_workers=num_workers, mp_context=get_context("spawn")) as pool:
                for subject_rows in pool.map(worker, tasks):
                    rows.extend(subject_rows)
                    bar.update()
        else:
            for task in tasks:
                rows.extend(worker(task))
                bar.update()
    return rows


def _write_labels(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


_META_COLUMNS = ["gender", "race", "age", *AU_NAMES]


def write_bu3dfe_tree(root, num_subjects: int, config: Optional[SyntheticConfig] = None, num_workers: int = 1,
                      progress: bool = True) -> dict:
    """Write a BU-3DFE-layout tree: ``F0001/F0001_AN01WH_F3D.wrl`` and ``.bnd`` for 6 expressions x 4 intensities
    plus ``NE00`` per subject, and ``synthetic_labels.csv`` (file, subject, expression, intensity, gender, race,
    age, one column per AU) at the root. Returns a summary (root, subjects, models, labels file)."""
    rows = _run_subjects(_write_bu3dfe_subject, root, num_subjects, config, num_workers, progress,
                        "Synthetic faces (BU-3DFE layout)")
    labels = os.path.join(root, LABELS_FILENAME)
    _write_labels(labels, ["file", "subject", "expression", "intensity", *_META_COLUMNS], rows)
    return {"root": str(root), "subjects": sorted({row[1] for row in rows}), "models": len(rows), "labels": labels}


def is_complete_tree(root) -> bool:
    """Whether a ``write_*_tree`` call finished at ``root``: its labels file is written last, so a killed call's
    partial tree has none."""
    return os.path.isfile(os.path.join(root, LABELS_FILENAME))


def write_bu4dfe_tree(root, num_subjects: int, config: Optional[SyntheticConfig] = None, num_workers: int = 1,
                      progress: bool = True) -> dict:
    """Write a BU-4DFE-layout tree: ``F001/Angry/000.wrl`` ... per subject and emotion, the landmark release
    ``BU4DFE_BND_V1.1/F001/Angry/000.bnd`` (``%.9g`` or ``%.6f`` per sequence, as in the real release), and a
    per-frame ``synthetic_labels.csv`` (file, subject, expression, frame, intensity = the time-course value,
    gender, race, age, one column per AU). Returns a summary (root, subjects, sequences, frames, labels file)."""
    rows = _run_subjects(_write_bu4dfe_subject, root, num_subjects, config, num_workers, progress,
                        "Synthetic faces (BU-4DFE layout)")
    labels = os.path.join(root, LABELS_FILENAME)
    _write_labels(labels, ["file", "subject", "expression", "frame", "intensity", *_META_COLUMNS], rows)
    sequences = {(row[1], row[2]) for row in rows}
    return {
        "root": str(root), "subjects": sorted({row[1] for row in rows}), "sequences": len(sequences),
        "frames": len(rows), "labels": labels,
    }
