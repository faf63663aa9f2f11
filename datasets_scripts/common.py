"""Machinery shared by the benchmark builders: configs, errors, the protocol splits, rendering and bad-file reports.

Every builder is a :class:`FacetBuilder` used as ``Builder(data_dir=..., config_name=..., cache_dir=...)`` then
``download_and_prepare()`` and ``as_dataset()``. Its configs are :class:`FacetBuilderConfig` objects:

* ``level`` ``"scan"`` (one static scan or frame per example) or ``"sequence"`` (a 4D clip, optionally cut into
  windows of ``window_length`` frames every ``window_stride`` frames).
* ``render``: False for the ``scans`` / ``sequences`` configs (paths, labels, metadata), True for ``views`` configs,
  which add ``pixel_values`` rendered by ``FacetMeshImageProcessor`` with the config's ``views``, ``image_size``,
  ``channels``, ``backend`` and (sequences) ``num_frames``: (V, C, H, W) per scan, (T, V, C, H, W) per sequence.
  ``render_settings=processor.render_settings()`` renders with every setting of an image processor instead, so
  that the cached pixels are those the processor gives at inference.
* ``protocol``, ``fold``, ``num_folds``, ``seed``: which examples the benchmark protocol keeps and how subjects are
  split (see :mod:`datasets_scripts.protocols`). Design: with ``fold=None`` (default) there is a single ``train``
  split holding every example of the protocol and a ``fold`` column (the fold whose test set holds the example's
  subject); with ``fold=k`` there are ``train`` and ``test`` splits, test holding the subjects of fold k, checked
  to share no subject with train.

Caching. The cache directory depends on every config field that changes the content (for rendering configs, every
image processor setting of :meth:`FacetBuilderConfig.processor_settings`, defaults included), so a view-setting change never reuses a stale cache; and on a fingerprint of the data tree
(relative paths, sizes and modification times of every file under ``data_dir``), so edited or added files are
picked up. A second ``download_and_prepare`` with the same settings reuses the cache without rendering.
``download_and_prepare(num_proc=N)`` renders in N processes (examples are list-valued gen_kwargs shards), each
with one torch thread (forked, or spawned for the OpenGL ``pyrender`` backend); the progress bar is datasets' "Generating <split> split" bar, with the example total
known up front.

Bad files. A scan or landmark file that cannot be read stops preparation with its ``ScanFormatError`` (the
message names the file). With ``skip_bad_files=True`` the example is skipped instead; at the end of
``download_and_prepare`` a warning gives the count and names, and ``bad_files.json`` in the dataset's cache folder
(``builder.bad_files_report``) lists ``{"path", "error"}`` entries, also returned by ``builder.bad_files``.
"""

from __future__ import annotations

import contextlib
import copyreg
import dataclasses
import glob
import hashlib
import json
import logging
import os
import re
import uuid
from typing import Optional

import datasets
import multiprocess
import numpy as np
import torch
from datasets.exceptions import DatasetGenerationError

from modeling_facet.image_processing_facet import DEFAULT_NUM_FRAMES, FacetMeshImageProcessor, pad_frames
from modeling_facet.mesh_io import FaceSequence, ScanFormatError, load_landmarks, load_scan
from modeling_facet.prompts import EMOTIONS, EXPRESSIONS
from modeling_facet.render_settings import DEFAULT_CHANNELS, DEFAULT_VIEWS, channel_count

from .protocols import fold_of_subject, train_test_subjects
from .registry import BENCHMARKS


logger = logging.getLogger(__name__)

EMOTIONS_WITH_NEUTRAL = EXPRESSIONS
GENDERS = {"F": "female", "M": "male"}
RENDER_FIELDS = ("views", "image_size", "channels", "backend", "num_frames", "render_settings")
_FRAME_RENDER_SETTINGS = ("num_frames", "frame_sampling", "window_stride")  # decide nothing for static scans
SEQUENCE_FIELDS = ("num_frames", "window_length", "window_stride")
DEFAULT_IMAGE_SIZE = 96  # the "small" model preset renders 96 px views
RENDER_BATCH_SIZE = 16  # static scans drawn per renderer call
BAD_FILES_REPORT = "bad_files.json"
_PARTIAL_REPORT = "bad_files-{}.json"


# ScanFormatError(path, problem) cannot be rebuilt from its message alone, so unpickling it fails; under
# download_and_prepare(num_proc=N) an unreadable scan in a worker would then hang the pool's result thread.
copyreg.pickle(ScanFormatError, lambda error: (ScanFormatError, (error.path, error.problem)))


class MissingDataError(FileNotFoundError):
    """The data directory is not given, is not the dataset's root, or lacks files the dataset must have."""


class LabelError(ValueError):
    """A file name or label file holds a code or value the dataset does not define; the message names the file."""


@dataclasses.dataclass
class FacetBuilderConfig(datasets.BuilderConfig):
    """Config of a benchmark builder; every field but the name can be overridden as a builder keyword argument.

    Args:
        level: ``"scan"`` (static scans or single frames) or ``"sequence"`` (4D clips).
        render: add rendered ``pixel_values`` (the ``views`` configs).
        views: (yaw, pitch) pairs in degrees, in the order of the view axis.
        image_size: side of each rendered view in pixels.
        channels: rendered channels per view (``shaded``, ``depth``, ``normals``, ``texture``).
        backend: renderer backend, ``"torch"`` or ``"pyrender"``.
        num_frames: frames rendered per sequence or window: the image processor spreads them evenly over it;
            shorter ones are padded, with ``frame_mask`` False on the padding.
        render_settings: an image processor's ``render_settings()``; its keys replace the five settings above, and
            the others (``face_size``, ``frame_sampling``, ``image_mean``, ...) are the processor's own.
        window_length: cut sequences into windows of this many frames (each window an example); ``None`` keeps
            whole sequences. A sequence shorter than the window gives one example with all its frames.
        window_stride: frames between the starts of consecutive windows.
        skip_bad_files: skip unreadable scans and landmark files and report them instead of stopping.
        protocol: the benchmark protocol (each builder lists its own).
        fold: ``None`` for one ``train`` split with a ``fold`` column, or the fold whose subjects form ``test``.
        num_folds: number of subject-independent folds of the protocol.
        seed: seed of the subject choice and of the fold assignment.
    """

    level: str = "scan"
    render: bool = False
    views: tuple = DEFAULT_VIEWS
    image_size: int = DEFAULT_IMAGE_SIZE
    channels: tuple = DEFAULT_CHANNELS
    backend: str = "torch"
    num_frames: int = DEFAULT_NUM_FRAMES
    render_settings: Optional[dict] = None
    window_length: Optional[int] = None
    window_stride: int = 1
    skip_bad_files: bool = False
    protocol: str = "standard"
    fold: Optional[int] = None
    num_folds: int = 10
    seed: int = 0

    def processor_settings(self) -> dict:
        """The ``FacetMeshImageProcessor`` keyword arguments this config renders with (every one of its
        ``render_settings()``): the view fields, replaced by any key of ``render_settings``."""
        fields = {name: getattr(self, name) for name in RENDER_FIELDS if name != "render_settings"}
        return FacetMeshImageProcessor(**{**fields, **(self.render_settings or {})}).render_settings()

    def content_settings(self) -> dict:
        """The fields that change the prepared data, canonicalised (tuples); the image processor settings count
        only when rendering, and frame settings only for sequences."""
        inherited = {field.name for field in dataclasses.fields(datasets.BuilderConfig)}
        unused = set(RENDER_FIELDS)
        if self.level != "sequence":
            unused.update(SEQUENCE_FIELDS)
        settings = {}
        for field in dataclasses.fields(self):
            if field.name not in inherited and field.name not in unused:
                settings[field.name] = _canonical(getattr(self, field.name))
        if self.render:
            rendering = self.processor_settings()
            if self.level != "sequence":
                rendering = {name: value for name, value in rendering.items() if name not in _FRAME_RENDER_SETTINGS}
            settings["render_settings"] = _canonical(rendering)
        return settings

    def create_config_id(self, config_kwargs: dict, custom_features=None) -> str:
        # datasets only hashes the kwargs given to the builder; hashing every content setting means a changed
        # default or view setting can never land in an existing cache folder.
        return super().create_config_id({**config_kwargs, **self.content_settings()}, custom_features)


def _canonical(value):
    """Lists as tuples and dicts as sorted item tuples, recursively (equal settings, equal cache keys)."""
    if isinstance(value, dict):
        return tuple(sorted((key, _canonical(item)) for key, item in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_canonical(item) for item in value)
    return value


def tree_fingerprint(root: str) -> str:
    """Hash of the relative path, size and modification time of every file under ``root`` (of the link itself for
    a dangling symlink: reading it is the reader's business, which names the file or skips it)."""
    digest = hashlib.sha256()
    for folder, subfolders, names in os.walk(root):
        subfolders.sort()
        for name in sorted(names):
            path = os.path.join(folder, name)
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                stat = os.lstat(path)
            digest.update(f"{os.path.relpath(path, root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def subject_folders(root: str, pattern: str, example: str) -> list:
    """Sorted names of the folders of ``root`` whose whole name matches ``pattern``; raises when there are none.

    The error says when a child folder holds the subject folders, i.e. when data_dir is one level too high.
    """
    regex = re.compile(pattern)
    names = sorted(name for name in os.listdir(root) if regex.fullmatch(name) and os.path.isdir(os.path.join(root, name)))
    if names:
        return names
    hint = ""
    for child in sorted(os.listdir(root)):
        child_path = os.path.join(root, child)
        if os.path.isdir(child_path) and any(regex.fullmatch(name) for name in os.listdir(child_path)):
            hint = f" ({child_path} holds some: pass it as data_dir)"
            break
    raise MissingDataError(f"{root} holds no subject folders named like {example}{hint}")


def subfolders(folder: str, what: str) -> list:
    """Sorted names of the folders inside a subject folder; raises naming ``what`` should be there when there are none."""
    names = sorted(name for name in os.listdir(folder) if os.path.isdir(os.path.join(folder, name)))
    if not names:
        raise MissingDataError(f"subject folder {folder} holds no {what}")
    return names


def window_starts(num_frames: int, length: Optional[int], stride: int) -> list:
    """First frame of each window of ``length`` frames, ``stride`` apart; ``[0]`` for no windows or short clips."""
    if length is None or num_frames <= length:
        return [0]
    return list(range(0, num_frames - length + 1, stride))


def frame_number(name: str) -> Optional[int]:
    """The integer of a frame file name made of digits and an extension (``0042.obj`` -> 42), else ``None``."""
    stem = os.path.splitext(name)[0]
    return int(stem) if stem.isdigit() else None


def numbered_frames(folder: str, extensions: tuple) -> list:
    """``(frame number, path)`` of the digit-named files of ``folder`` with one of ``extensions``, by number."""
    frames = []
    for name in os.listdir(folder):
        number = frame_number(name)
        if number is not None and os.path.splitext(name)[1].lower() in extensions:
            frames.append((number, os.path.join(folder, name)))
    return sorted(frames)


def subject_features() -> dict:
    """Subject metadata columns (strings; ``None`` where the dataset does not say)."""
    return {name: datasets.Value("string") for name in ("subject", "gender", "race", "age")}


def points_feature() -> datasets.List:
    """A list of [x, y, z] points."""
    return datasets.List(datasets.List(datasets.Value("float32"), length=3))


class FacetBuilder(datasets.GeneratorBasedBuilder):
    """Base of the benchmark builders: protocol splits, landmark loading, rendering and bad-file accounting.

    A subclass sets ``DATASET`` (display name), ``DATA_SOURCE`` (where the data comes from, for errors about
    missing data; the default says it must be obtained from its owners under license), ``LEVELS`` and
    ``PROTOCOLS`` (the accepted ``level`` and ``protocol`` values), ``FRAME_FIELDS`` (the per-frame list
    columns that windows cut) and ``LABEL_NAMES`` (the names of each multi-hot label column), and implements:

    * ``_example_features()``: the columns besides ``fold``, ``window_start`` and the rendered ones;
    * ``_index(root)``: one dict per example with the feature values, ``scan_path`` or ``frame_paths``, and
      optionally ``landmark_path`` (a file whose points fill ``landmarks`` and ``landmark_names``); it raises
      :class:`MissingDataError` with just the problem, to which the dataset name and ``DATA_SOURCE`` are added;
    * ``_folds(examples)``: the examples the protocol uses and its folds (examples of subjects in no fold are
      dropped).
    """

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = FacetBuilderConfig
    DATASET = ""
    DATA_SOURCE = (
        "The data is not distributed with this package: it must be obtained from its owners under their license, "
        "and data_dir must be the root folder of their release."
    )
    LEVELS = ("scan",)
    PROTOCOLS = ("standard",)
    FRAME_FIELDS = ("frame_paths",)
    LABEL_NAMES = {}

    def __init__(self, *args, data_dir: Optional[str] = None, hash: Optional[str] = None, **kwargs):
        if hash is None and data_dir is not None and os.path.isdir(data_dir):
            hash = tree_fingerprint(data_dir)
        super().__init__(*args, data_dir=data_dir, hash=hash, **kwargs)
        self._check_config()
        self._main_pid = os.getpid()

    def _check_config(self):
        config = self.config
        if config.level not in self.LEVELS:
            raise ValueError(f"{self.DATASET} level must be one of {self.LEVELS}, got {config.level!r}")
        if config.protocol not in self.PROTOCOLS:
            raise ValueError(f"{self.DATASET} protocol must be one of {self.PROTOCOLS}, got {config.protocol!r}")
        if config.num_folds < 2:
            raise ValueError(f"num_folds must be at least 2, got {config.num_folds}")
        if config.fold is not None and config.fold < 0:
            raise ValueError(f"fold must be None or a fold index >= 0, got {config.fold}")
        if (config.window_length is not None and config.window_length < 1) or config.window_stride < 1:
            raise ValueError(
                f"window_length and window_stride must be >= 1, got {config.window_length}, {config.window_stride}"
            )
        if config.render:
            config.processor_settings()  # the image processor checks its settings

    # ------------------------------------------------------------------------------------------------ features

    def _example_features(self) -> dict:
        raise NotImplementedError

    def _is_sequence(self) -> bool:
        return self.config.level == "sequence"

    def _pixel_features(self) -> dict:
        settings = self.config.processor_settings()
        size, frames = settings["image_size"], settings["num_frames"]
        shape = (len(settings["views"]), channel_count(settings["channels"]), size, size)
        if not self._is_sequence():
            return {"pixel_values": datasets.Array4D(shape=shape, dtype="float32")}
        return {
            "pixel_values": datasets.Array5D(shape=(frames, *shape), dtype="float32"),
            "frame_mask": datasets.List(datasets.Value("bool"), length=frames),
        }

    def _info(self) -> datasets.DatasetInfo:
        features = {**self._example_features(), "fold": datasets.Value("int32")}
        if self._is_sequence():
            features["window_start"] = datasets.Value("int32")
        if self.config.render:
            features.update(self._pixel_features())
        benchmark, about = BENCHMARKS.get(type(self).__module__.rsplit(".", 1)[-1]), {}
        if benchmark is not None:  # the registry's facts; a builder subclassed elsewhere has none
            about = dict(citation=benchmark.citation or "", homepage=benchmark.homepage or "", license=benchmark.license)
        return datasets.DatasetInfo(description=self.__doc__, features=datasets.Features(features), **about)

    # ------------------------------------------------------------------------------------------------ splits

    def _data_root(self, data_dir: Optional[str]) -> str:
        if data_dir is None:
            raise MissingDataError("no data_dir was given")
        if not os.path.isdir(data_dir):
            raise MissingDataError(f"data_dir {data_dir} does not exist or is not a folder")
        return os.path.abspath(data_dir)

    def _index(self, root: str) -> list:
        raise NotImplementedError

    def _folds(self, examples: list) -> tuple:
        raise NotImplementedError

    def _windows(self, examples: list) -> list:
        """Cut sequence examples into windows (every ``FRAME_FIELDS`` column is sliced alike)."""
        config, windows = self.config, []
        for example in examples:
            for start in window_starts(len(example["frame_paths"]), config.window_length, config.window_stride):
                stop = None if config.window_length is None else start + config.window_length
                window = {**example, "window_start": start}
                window.update({name: example[name][start:stop] for name in self.FRAME_FIELDS})
                windows.append(window)
        return windows

    def _split_generators(self, dl_manager) -> list:
        try:
            examples, folds = self._folds(self._index(self._data_root(dl_manager.manual_dir)))
        except MissingDataError as error:
            raise MissingDataError(f"{self.DATASET}: {error}. {self.DATA_SOURCE}") from None
        fold_of = fold_of_subject(folds)
        examples = [{**e, "fold": fold_of[e["subject"]]} for e in examples if e["subject"] in fold_of]
        if self._is_sequence():
            examples = self._windows(examples)
        if self.config.fold is None:
            return [self._split_generator(datasets.Split.TRAIN, examples)]
        train, test = train_test_subjects(folds, self.config.fold)
        train, test = set(train), set(test)
        return [
            self._split_generator(datasets.Split.TRAIN, [e for e in examples if e["subject"] in train]),
            self._split_generator(datasets.Split.TEST, [e for e in examples if e["subject"] in test]),
        ]

    @staticmethod
    def _split_generator(name, examples: list) -> datasets.SplitGenerator:
        generator = datasets.SplitGenerator(name=name, gen_kwargs={"examples": examples})
        generator.split_info.num_examples = len(examples)  # gives the progress bar its total
        return generator

    # ------------------------------------------------------------------------------------------------ examples

    def _generate_examples(self, examples: list):
        if os.getpid() != self._main_pid:
            # A worker of download_and_prepare(num_proc=N), forked from a process that may have run torch: OpenMP
            # deadlocks there unless the worker is single-threaded, and N workers share the cores anyway.
            torch.set_num_threads(1)
        bad_files = []
        processor = self._image_processor() if self.config.render else None
        batch_size = 1 if self._is_sequence() else RENDER_BATCH_SIZE
        for first in range(0, len(examples), batch_size):
            batch = [self._read(example, bad_files) for example in examples[first : first + batch_size]]
            batch = [item for item in batch if item is not None]
            if processor is not None:
                batch = self._with_pixels(batch, processor, bad_files)
            for example, _ in batch:
                key = example.get("scan_path") or f"{example['frame_paths'][0]}@{example['window_start']}"
                yield key, {name: value for name, value in example.items() if name in self.info.features}
        self._write_partial_report(bad_files)

    def _skip_or_raise(self, error: ScanFormatError, bad_files: list) -> None:
        if not self.config.skip_bad_files:
            raise error
        bad_files.append({"path": error.path, "error": str(error)})

    def _read(self, example: dict, bad_files: list) -> Optional[tuple]:
        """``(example with its landmarks column, render input or None)``; None when a file is skipped.

        A static scan is read here, with its landmark file attached (a named nose tip guides normalisation);
        sequence frames are read by the image processor.
        """
        landmark_path = example.get("landmark_path")
        try:
            if "landmarks" in self.info.features:
                names, points, _ = load_landmarks(landmark_path) if landmark_path else (None, np.zeros((0, 3)), None)
                example = {**example, "landmarks": points.tolist(), "landmark_names": names or []}
            if not self.config.render:
                return example, None
            if self._is_sequence():
                return example, FaceSequence(list(example["frame_paths"]), list(example["frame_paths"]))
            return example, load_scan(example["scan_path"], landmarks=landmark_path or False)
        except ScanFormatError as error:
            self._skip_or_raise(error, bad_files)
            return None

    def _image_processor(self) -> FacetMeshImageProcessor:
        return FacetMeshImageProcessor(**self.config.processor_settings())

    def _render(self, processor, inputs: list) -> list:
        """One dict of ``pixel_values`` (and, for sequences, ``frame_mask`` padded to ``num_frames``) per input."""
        outputs = processor(inputs)
        pixels = np.asarray(outputs["pixel_values"], dtype=np.float32)
        if not self._is_sequence():
            return [{"pixel_values": pixel} for pixel in pixels]
        masks = torch.as_tensor(np.asarray(outputs["frame_mask"], dtype=bool))
        pixels, masks = pad_frames(torch.from_numpy(pixels)[masks], masks.sum(dim=1), processor.num_frames)
        return [{"pixel_values": pixel, "frame_mask": mask.tolist()} for pixel, mask in zip(pixels.numpy(), masks)]

    def _with_pixels(self, batch: list, processor, bad_files: list) -> list:
        """Add the rendered views to ``(example, render input)`` pairs; a scan the renderer rejects stops
        preparation, or is found by rendering the batch one by one and skipped."""
        try:
            rendered = self._render(processor, [item for _, item in batch])
            return [({**example, **pixels}, item) for (example, item), pixels in zip(batch, rendered)]
        except ScanFormatError as error:
            if len(batch) == 1 or not self.config.skip_bad_files:
                self._skip_or_raise(error, bad_files)
                return []
        return [result for pair in batch for result in self._with_pixels([pair], processor, bad_files)]

    # ------------------------------------------------------------------------------------------------ errors

    def _prepare_split_single(self, *args, **kwargs):
        # datasets wraps errors of _generate_examples in a generic DatasetGenerationError; surface the file's own.
        try:
            yield from super()._prepare_split_single(*args, **kwargs)
        except DatasetGenerationError as error:
            if isinstance(error.__cause__, ScanFormatError):
                raise error.__cause__ from None
            raise

    def _write_partial_report(self, bad_files: list) -> None:
        if bad_files:
            path = os.path.join(self._output_dir, _PARTIAL_REPORT.format(uuid.uuid4().hex))
            with open(path, "w") as handle:
                json.dump(bad_files, handle)

    @property
    def bad_files_report(self) -> str:
        """Path of the JSON list of skipped files in the prepared dataset's folder (absent when none were)."""
        return os.path.join(self._output_dir, BAD_FILES_REPORT)

    @property
    def bad_files(self) -> list:
        """``{"path", "error"}`` of every file skipped with ``skip_bad_files=True`` (empty when none were)."""
        if not os.path.isfile(self.bad_files_report):
            return []
        with open(self.bad_files_report) as handle:
            return json.load(handle)

    def _merge_partial_reports(self) -> None:
        """Join the skipped-file lists that each generation job wrote into ``bad_files.json``."""
        partials = sorted(glob.glob(os.path.join(glob.escape(self._output_dir), _PARTIAL_REPORT.format("*"))))
        if not partials:
            return
        entries = []
        for path in partials:
            with open(path) as handle:
                entries.extend(json.load(handle))
        with open(self.bad_files_report, "w") as handle:
            json.dump(sorted(entries, key=lambda entry: entry["path"]), handle, indent=1)
        for path in partials:
            os.remove(path)

    @contextlib.contextmanager
    def _worker_start_method(self, num_proc: Optional[int]):
        """Spawn (not fork) the workers that render with OpenGL: a process forked after its parent drew with EGL
        hangs in the driver."""
        render = self.config.render and num_proc and num_proc > 1
        if not (render and self.config.processor_settings()["backend"] == "pyrender"):
            yield
            return
        previous = multiprocess.get_start_method(allow_none=True)
        multiprocess.set_start_method("spawn", force=True)
        try:
            yield
        finally:
            multiprocess.set_start_method(previous, force=True)

    def download_and_prepare(self, *args, num_proc: Optional[int] = None, **kwargs):
        """Prepare the dataset (or reuse the cache), then report the files skipped with ``skip_bad_files=True``."""
        self._main_pid = os.getpid()
        with self._worker_start_method(num_proc):
            super().download_and_prepare(*args, num_proc=num_proc, **kwargs)
        self._merge_partial_reports()
        skipped = self.bad_files
        if skipped:
            names = ", ".join(entry["path"] for entry in skipped)
            logger.warning(
                f"{self.DATASET}: skipped {len(skipped)} unreadable file(s) (skip_bad_files=True): {names}. "
                f"Details: {self.bad_files_report}"
            )
