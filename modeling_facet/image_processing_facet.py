"""Image processor for FACET-VLM: 3D scans and 4D scan sequences -> rendered multiview `pixel_values`."""

from __future__ import annotations

import copy
import os

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.utils import is_vision_available

from .mesh_io import FaceScan, FaceSequence, load_scan, load_sequence
from .rasterization import to_device
from .render_settings import DEFAULT_CHANNELS, DEFAULT_FACE_SIZE, DEFAULT_VIEWS, canonical_views, channel_offset
from .rendering import MultiviewRenderer, shade


if not is_vision_available():  # transformers then hands out dummy image-processor classes that fail obscurely later
    raise ImportError("FACET-VLM's image processor needs Pillow (and trimesh for mesh files): pip install pillow trimesh")

FRAME_SAMPLING_MODES = ("uniform", "window")
DEFAULT_NUM_FRAMES = 8
# The settings that decide the pixel_values of a scan or sequence when nothing is augmented.
RENDER_SETTINGS = (
    "views", "image_size", "channels", "backend", "face_size", "num_frames", "frame_sampling", "window_stride",
    "image_mean", "image_std",
)  # fmt: skip
_SUPPORTED_INPUTS = (
    "a scan file path, a sequence folder path, a FaceScan, a FaceSequence, a trimesh.Trimesh / trimesh.Scene, "
    "a mapping with 'vertices' and 'faces', or a list of those"
)


def pad_frames(frames: torch.Tensor, lengths, length: int | None = None) -> tuple:
    """`(padded, frame_mask)`: the frames of several sequences, concatenated along the first axis (`lengths[i]` of
    sequence i), zero-padded into (B, T, ...) with T = `length` (default: the longest), and the boolean (B, T)
    `frame_mask`, False on padding."""
    lengths = torch.as_tensor(lengths)
    length = int(lengths.max()) if length is None else int(length)
    frame_mask = torch.arange(length)[None, :] < lengths[:, None]
    padded = frames.new_zeros((len(lengths), length, *frames.shape[1:]))
    padded[frame_mask] = frames
    return padded, frame_mask


def _describe(item) -> str:
    """A one-line description of an input for error messages."""
    if hasattr(item, "shape"):
        return f"of shape {tuple(item.shape)}"
    text = " ".join(repr(item).split())
    return text if len(text) <= 80 else text[:77] + "..."


def _normals_foreground(encoded: torch.Tensor) -> torch.Tensor:
    """Face pixels of an encoded normals image (..., 3, H, W): rendered normals face the camera, so their z >= 0 maps
    to >= 0.5, where the background is 0."""
    return encoded[..., 2:3, :, :] > 0.25


class FacetMeshImageProcessor(BaseImageProcessor):
    r"""
    Turns face scans into the multiview images FACET-VLM consumes: each scan is normalised (nose tip at the origin,
    fixed face size) and rendered from every view by [`~rendering.MultiviewRenderer`]; 4D sequences are sampled to
    at most `num_frames` frames. With `augment=True`, mixed view augmentation gives every view of every sample its
    own random horizontal flip, in-plane rotation, scale (crop) and translation; the frames of a sequence share
    their view's transform so that motion is not distorted. Surface-normal channels are rotated and mirrored with
    the image, so they stay consistent with the transformed face.

    Args:
        views (sequence of `(yaw, pitch)`): view angles in degrees, in the order of the view axis.
        image_size (`int`): side of each rendered view in pixels.
        channels (sequence of `str`): rendered channels ("shaded", "depth", "normals", "texture").
        backend (`str`): renderer, "torch" (z-buffer rasterizer on CPU or GPU) or "pyrender" (OpenGL through EGL).
        face_size (`float`): robust face radius in the canonical frame, where a view spans [-1, 1].
        num_frames (`int`): number T of frames sampled from a 4D sequence (shorter sequences keep all frames).
        frame_sampling (`str`): "uniform" (evenly spaced over the whole sequence) or "window" (T consecutive frames
            `window_stride` apart: centred without augmentation, at a random start with it).
        window_stride (`int`): step between the frames of a "window".
        image_mean, image_std (`float`): pixels = (rendered value in [0, 1] - image_mean) / image_std.
        max_rotation (`float`): largest in-plane rotation of the augmentation, in degrees.
        scale_range (`(float, float)`): range of the augmentation's zoom factor (> 1 crops into the face).
        max_translation (`float`): largest shift of the augmentation, as a fraction of the image side.
        flip_probability (`float`): probability of a horizontal flip per view.
    """

    model_input_names = ["pixel_values", "frame_mask"]

    def __init__(
        self,
        views=DEFAULT_VIEWS,
        image_size: int = 224,
        channels=DEFAULT_CHANNELS,
        backend: str = "torch",
        face_size: float = DEFAULT_FACE_SIZE,
        num_frames: int = DEFAULT_NUM_FRAMES,
        frame_sampling: str = "uniform",
        window_stride: int = 1,
        image_mean: float = 0.5,
        image_std: float = 0.5,
        max_rotation: float = 10.0,
        scale_range=(0.9, 1.1),
        max_translation: float = 0.05,
        flip_probability: float = 0.5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.views = canonical_views(views)
        self.image_size = int(image_size)
        self.channels = list(channels)
        self.backend = backend
        self.face_size = float(face_size)
        self.num_frames = int(num_frames)
        self.frame_sampling = frame_sampling
        self.window_stride = int(window_stride)
        self.image_mean = float(image_mean)
        self.image_std = float(image_std)
        self.max_rotation = float(max_rotation)
        self.scale_range = [float(value) for value in scale_range]
        self.max_translation = float(max_translation)
        self.flip_probability = float(flip_probability)
        self._check()
        # Building the renderer validates views, image_size, channels, backend and face_size.
        self._renderer = (self._render_settings(), self._build_renderer())

    def _check(self):
        if self.frame_sampling not in FRAME_SAMPLING_MODES:
            raise ValueError(f"frame_sampling={self.frame_sampling!r}; expected one of {FRAME_SAMPLING_MODES}.")
        if self.num_frames < 1 or self.window_stride < 1:
            raise ValueError(f"num_frames={self.num_frames} and window_stride={self.window_stride} must be >= 1.")
        if not self.image_std > 0:
            raise ValueError(f"image_std={self.image_std} must be positive.")
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range={self.scale_range} must be (low, high) with 0 < low <= high.")
        if self.max_rotation < 0 or self.max_translation < 0 or not 0 <= self.flip_probability <= 1:
            raise ValueError(
                f"max_rotation={self.max_rotation} and max_translation={self.max_translation} must be >= 0 and "
                f"flip_probability={self.flip_probability} in [0, 1]."
            )

    @classmethod
    def from_model_config(cls, config, **kwargs) -> "FacetMeshImageProcessor":
        """An image processor whose views, channels and image size match a [`FacetVLMConfig`]; `kwargs` set the
        other arguments (at most `config.max_frames` frames are sampled by default)."""
        defaults = dict(views=config.views, channels=config.channels, image_size=config.image_size)
        defaults["num_frames"] = min(DEFAULT_NUM_FRAMES, config.max_frames)
        return cls(**{**defaults, **kwargs})

    def render_settings(self) -> dict:
        """The settings of [`RENDER_SETTINGS`], as `FacetMeshImageProcessor(**settings)` takes them: the dataset
        builders render cached training views with exactly these (and key their cache by them), so that training
        sees the pixels this processor gives at inference."""
        return copy.deepcopy({name: getattr(self, name) for name in RENDER_SETTINGS})

    def _render_settings(self) -> tuple:
        return copy.deepcopy((self.views, self.image_size, self.channels, self.backend, self.face_size))

    def _build_renderer(self) -> MultiviewRenderer:
        return MultiviewRenderer(
            views=self.views, image_size=self.image_size, channels=self.channels, backend=self.backend,
            face_size=self.face_size,
        )  # fmt: skip

    @property
    def renderer(self) -> MultiviewRenderer:
        """The [`MultiviewRenderer`] of the current settings (rebuilt when they change)."""
        settings, renderer = self.__dict__.get("_renderer") or (None, None)
        if settings != self._render_settings():
            renderer = self._build_renderer()
            self._renderer = (self._render_settings(), renderer)
        return renderer

    def to_dict(self) -> dict:
        """The JSON-serialisable settings (the cached renderer is left out)."""
        output = {key: copy.deepcopy(value) for key, value in self.__dict__.items() if not key.startswith("_")}
        output["image_processor_type"] = type(self).__name__
        return output

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_renderer", None)
        return state

    def sample_frames(self, num_frames_total: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """Indices of the frames kept from a sequence of `num_frames_total` frames (at most `num_frames`).

        "uniform" spreads them evenly from the first to the last frame; "window" takes consecutive frames
        `window_stride` apart, centred in the sequence, or at a random start drawn from `rng` when given.
        """
        total, wanted, stride = int(num_frames_total), self.num_frames, self.window_stride
        if total < 1:
            raise ValueError(f"A sequence needs at least one frame; got {num_frames_total}.")
        if self.frame_sampling == "uniform":
            if total <= wanted:
                return np.arange(total)
            return np.rint(np.linspace(0, total - 1, wanted)).astype(np.int64)
        span = (wanted - 1) * stride + 1
        if total < span:
            return np.arange(0, total, stride)[:wanted]
        start = int(rng.integers(total - span + 1)) if rng is not None else (total - span) // 2
        return start + stride * np.arange(wanted)

    def _load(self, item, position: int):
        """A FaceScan / trimesh.Trimesh (static) or a FaceSequence (4D) for one input item."""
        if isinstance(item, (str, os.PathLike)):
            return load_sequence(item) if os.path.isdir(item) else load_scan(item)
        if isinstance(item, (FaceScan, FaceSequence, trimesh.Trimesh)):
            return item
        if isinstance(item, trimesh.Scene):
            return item.to_geometry()
        if isinstance(item, dict) and "vertices" in item and "faces" in item:
            return FaceScan(vertices=np.asarray(item["vertices"]), faces=np.asarray(item["faces"]))
        raise ValueError(
            f"Unsupported input {type(item).__name__} {_describe(item)} at position {position}; "
            f"expected {_SUPPORTED_INPUTS}."
        )

    def augment_views(self, images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Mixed view augmentation of rendered images (B, T, V, C, H, W) in [0, 1]: one random flip, rotation,
        scale and translation per (sample, view), shared by the T frames; the background stays 0."""
        batch, frames, views = images.shape[:3]
        count = batch * views
        flip = np.where(rng.random(count) < self.flip_probability, -1.0, 1.0)
        angle = np.radians(rng.uniform(-self.max_rotation, self.max_rotation, count))
        scale = rng.uniform(*self.scale_range, count)
        # Normalised image coordinates span 2, so a shift of a fraction f of the side is 2 f.
        shift = 2.0 * rng.uniform(-self.max_translation, self.max_translation, (count, 2))
        cos, sin = np.cos(angle), np.sin(angle)
        # Content map p -> scale * R(angle) @ diag(flip, 1) @ p + shift, in (x right, y down) coordinates.
        linear = np.stack([np.stack([cos * flip, -sin], -1), np.stack([sin * flip, cos], -1)], -2)
        inverse = np.linalg.inv(scale[:, None, None] * linear)
        theta = np.concatenate([inverse, -(inverse @ shift[:, :, None])], axis=2)

        def per_image(array):  # (B * V, ...) -> (B * T * V, ...), one value per image, shared over frames
            tensor = to_device(array, images.device, images.dtype).view(batch, 1, views, *array.shape[1:])
            return tensor.expand(batch, frames, views, *array.shape[1:]).reshape(-1, *array.shape[1:])

        flat = images.reshape(-1, *images.shape[3:])
        flat = self._turn_normals(flat, per_image(linear))
        grid = F.affine_grid(per_image(theta), list(flat.shape), align_corners=False)
        warped = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return warped.view(images.shape)

    def augment_pixel_values(self, pixel_values: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """Mixed view augmentation of already normalised `pixel_values`, (B, V, C, H, W) or (B, T, V, C, H, W):
        what training applies to renders cached by the dataset builders. Deterministic under `seed`."""
        static = pixel_values.dim() == 5
        images = pixel_values.unsqueeze(1) if static else pixel_values
        images = self.augment_views(images * self.image_std + self.image_mean, np.random.default_rng(seed))
        augmented = (images - self.image_mean) / self.image_std
        return augmented[:, 0] if static else augmented

    def augment_for_training(self, pixel_values: torch.Tensor, seed: int, augment_views: bool = False,
                             mirror_scans: float = 0.0, occlude_views: float = 0.0) -> torch.Tensor:  # fmt: skip
        """The pixel augmentations a training batch gets, in order and each seeded from `seed`: mixed view
        augmentation, scans mirrored with probability `mirror_scans`, and a view blanked with probability
        `occlude_views` (training/config.py names the three)."""
        if augment_views:
            pixel_values = self.augment_pixel_values(pixel_values, seed=seed)
        if mirror_scans:
            pixel_values = self.mirror_views(pixel_values, mirror_scans, seed=[seed, 2])
        if occlude_views:
            pixel_values = self.occlude_views(pixel_values, occlude_views, seed=[seed, 1])
        return pixel_values

    def occlude_views(self, pixel_values: torch.Tensor, probability: float, seed=None) -> torch.Tensor:
        """With `probability`, blank one random view of a sample (every frame of it) to the background value, as a
        scanner hole or an occluder would: a reason for CVSA to weight the views. `pixel_values` are normalised,
        (B, V, C, H, W) or (B, T, V, C, H, W); a single view is never blanked. Deterministic under `seed`."""
        views = pixel_values.shape[-4]
        if probability <= 0 or views < 2:
            return pixel_values
        rng = np.random.default_rng(seed)
        batch = pixel_values.shape[0]
        chosen = rng.integers(0, views, batch)
        blanked = (rng.random(batch) < probability)[:, None] & (np.arange(views)[None] == chosen[:, None])
        mask = to_device(blanked, pixel_values.device, torch.bool)
        mask = mask.view(batch, *(1,) * (pixel_values.dim() - 5), views, 1, 1, 1)
        return pixel_values.masked_fill(mask, -self.image_mean / self.image_std)

    def mirror_views(self, pixel_values: torch.Tensor, probability: float = 1.0, seed=None) -> torch.Tensor:
        """The scans mirrored left to right, as if each face were rendered with x -> -x: every view is flipped
        horizontally and takes the place of its mirror-image view (yaw -> -yaw), normals' x is negated and the
        shading is relit from the mirrored normals (without a normals channel the light comes from the other side).
        `pixel_values` are normalised, (B, V, C, H, W) or (B, T, V, C, H, W); with `probability` below 1 each sample
        is mirrored with that probability, deterministically under `seed`."""
        order = self.mirror_view_order()
        images = pixel_values * self.image_std + self.image_mean
        mirrored = images.flip(-1)[..., order, :, :, :]  # indexing copies: the channels below are written in place
        if "normals" in self.channels:
            start = channel_offset(self.channels, "normals")
            normals = mirrored[..., start : start + 3, :, :]
            foreground = _normals_foreground(normals)
            normals[..., :1, :, :] = torch.where(foreground, 1 - normals[..., :1, :, :], 0.0)
            if "shaded" in self.channels:
                at = channel_offset(self.channels, "shaded")
                relit = shade(normals * 2 - 1, dim=normals.dim() - 3).unsqueeze(-3)
                mirrored[..., at : at + 1, :, :] = torch.where(foreground, relit, 0.0)
        mirrored = (mirrored - self.image_mean) / self.image_std
        if probability >= 1:
            return mirrored
        chosen = np.random.default_rng(seed).random(pixel_values.shape[0]) < probability
        mask = to_device(chosen, pixel_values.device, torch.bool).view(-1, *(1,) * (pixel_values.dim() - 1))
        return torch.where(mask, mirrored, pixel_values)

    def mirror_view_order(self) -> list:
        """For each view, the index of its mirror image (yaw negated, the same pitch); raises when a view has none."""
        order = []
        for yaw, pitch in self.views:
            matches = [j for j, (other_yaw, other_pitch) in enumerate(self.views)
                       if abs(other_yaw + yaw) < 1e-6 and abs(other_pitch - pitch) < 1e-6]  # fmt: skip
            if not matches:
                raise ValueError(f"Cannot mirror the views {self.views}: there is no mirror image of view "
                                 f"{[yaw, pitch]} (yaw {-yaw:g}, pitch {pitch:g}).")  # fmt: skip
            order.append(matches[0])
        return order

    def _turn_normals(self, images: torch.Tensor, linear: torch.Tensor) -> torch.Tensor:
        """Applies each image's in-plane rotation / mirror `linear` (N, 2, 2) to its surface-normal channels."""
        if "normals" not in self.channels:
            return images
        start = channel_offset(self.channels, "normals")
        encoded = images[:, start : start + 3]
        foreground = _normals_foreground(encoded)
        # (x, y) of the normal in image coordinates, where y points down.
        planar = torch.stack([2 * encoded[:, 0] - 1, 1 - 2 * encoded[:, 1]], dim=1)
        turned = torch.einsum("nij,njhw->nihw", linear, planar)
        decoded = torch.stack([(turned[:, 0] + 1) / 2, (1 - turned[:, 1]) / 2], dim=1)
        images = images.clone()
        images[:, start : start + 2] = torch.where(foreground, decoded, torch.zeros_like(decoded))
        return images

    def __call__(self, scans, augment: bool = False, seed: int | None = None, return_tensors=None) -> BatchFeature:
        """
        Render scans or sequences into `pixel_values`.

        Args:
            scans: one input or a list (a batch) of: a scan file path (.wrl, .bnt, .obj, .ply, ...), a folder of
                frame files (a 4D sequence), a `FaceScan`, a `FaceSequence`, a `trimesh.Trimesh` or `Scene`, or a
                mapping with "vertices" and "faces".
            augment (`bool`): apply mixed view augmentation (and random window starts for "window" sampling).
            seed (`int`, *optional*): makes the augmentation reproducible.
            return_tensors (`str`, *optional*): "pt" for torch tensors, "np" or None for numpy arrays.

        Returns:
            [`BatchFeature`] with `pixel_values` of shape (B, V, C, H, W) for static scans, or (B, T, V, C, H, W)
            plus a boolean `frame_mask` (B, T) as soon as one input is a sequence (shorter sequences are padded;
            static scans in such a batch are 1-frame sequences).

        Raises:
            ValueError: an unsupported input type (naming it and its position).
            ScanFormatError: a scan file is missing or malformed (naming the file).
        """
        items = list(scans) if isinstance(scans, (list, tuple)) else [scans]
        if not items:
            raise ValueError("No scans given: pass a scan, a sequence or a non-empty list of them.")
        loaded = [self._load(item, position) for position, item in enumerate(items)]
        rng = np.random.default_rng(seed) if augment else None
        is_4d = any(isinstance(item, FaceSequence) for item in loaded)
        frame_lists = []
        for item in loaded:
            if isinstance(item, FaceSequence):
                frame_lists.append([item.load(int(index)) for index in self.sample_frames(len(item), rng)])
            else:
                frame_lists.append([item])
        lengths = [len(frames) for frames in frame_lists]
        rendered = torch.from_numpy(self.renderer.render_batch([frame for frames in frame_lists for frame in frames]))
        images, frame_mask = pad_frames(rendered, lengths)
        if augment:
            images = self.augment_views(images, rng)
        pixel_values = (images - self.image_mean) / self.image_std
        pixel_values = pixel_values.masked_fill(~frame_mask[:, :, None, None, None, None], 0.0)
        data = {"pixel_values": pixel_values.numpy()}
        if is_4d:
            data["frame_mask"] = frame_mask.numpy()
        else:
            data["pixel_values"] = data["pixel_values"][:, 0]
        return BatchFeature(data=data, tensor_type=return_tensors)


__all__ = ["FacetMeshImageProcessor", "pad_frames"]
