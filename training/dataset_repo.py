"""The Hub dataset repository of a benchmark (`facet-vlm publish-dataset`): its dataset card (where the data comes
from, how to obtain and load it), the builder code (the builder module and what it imports relatively) and, for the
synthetic benchmark, the data itself as Parquet. Pushing goes through [`training.publish`]."""

from __future__ import annotations

import ast
import importlib
import math
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData

from datasets_scripts.registry import benchmark_of

from .publish import build_and_push, check_repo_id


PARQUET_CONFIGS = ("scans", "views")
MAX_PARQUET_SHARD_BYTES = 500 << 20  # the Hub's recommended upper size of a Parquet file


def builder_sources(module: str) -> list:
    """Source files of a `datasets_scripts` builder module and, recursively, of the package modules it imports
    with relative imports (plus the package's `__init__.py`), so the copy is importable as `datasets_scripts`."""
    package = importlib.import_module(module.rsplit(".", 1)[0])
    root = Path(package.__file__).parent
    pending, found = [module.rsplit(".", 1)[1]], {"__init__"}
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found.add(name)
        tree = ast.parse((root / f"{name}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                pending.extend([node.module] if node.module else [alias.name for alias in node.names])
    return sorted(root / f"{name}.py" for name in found)


def _relative_path(path):
    """A scan path inside a BU-3DFE-layout tree as "<subject folder>/<file>" (never a local absolute path)."""
    return None if not path else "/".join(Path(path).parts[-2:])


def _relative_paths(example) -> dict:
    return {"scan_path": _relative_path(example["scan_path"]), "landmark_path": _relative_path(example["landmark_path"])}


def _mesh_columns(example) -> dict:
    from modeling_facet.mesh_io import load_scan

    scan = load_scan(example["scan_path"])
    return {"vertices": scan.vertices, "faces": scan.faces}


def _with_meshes(dataset):
    """The dataset with `vertices` / `faces` columns read from each scan."""
    import datasets

    features = datasets.Features({
        **dataset.features, "vertices": datasets.Array2D(shape=(None, 3), dtype="float32"),
        "faces": datasets.Array2D(shape=(None, 3), dtype="int32"),
    })  # fmt: skip
    return dataset.map(_mesh_columns, features=features, desc="Reading meshes")


def _write_parquet(dataset, folder: Path, split: str) -> list:
    """Write `dataset` as Parquet shards of at most about MAX_PARQUET_SHARD_BYTES under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = max(1, math.ceil(dataset.data.nbytes / MAX_PARQUET_SHARD_BYTES))
    paths = []
    for index in range(shards):
        path = folder / f"{split}-{index:05d}-of-{shards:05d}.parquet"
        dataset.shard(shards, index, contiguous=True).to_parquet(str(path))
        paths.append(path)
    return paths


def synthetic_parquet(folder, num_subjects: int = 10, num_folds: int | None = None, data_seed: int = 0,
                      image_size: int | None = None, configs=PARQUET_CONFIGS, cache_dir=None) -> dict:  # fmt: skip
    """Generate the synthetic benchmark with the SyntheticFaces builder (every scan of every subject, protocol
    "all7", one train split with a subject-independent `fold` column) and write each config as Parquet under
    `folder/<config>/`: "scans" with the mesh `vertices` and `faces`, "views" with the rendered `pixel_values`.
    Returns config name -> row count."""
    from datasets_scripts.synthetic import SyntheticFaces

    if num_subjects < 2:
        raise ValueError(f"num_subjects must be at least 2 (subject-independent folds); got {num_subjects}.")
    unknown = sorted(set(configs) - set(PARQUET_CONFIGS))
    if unknown:
        raise ValueError(f"Unknown synthetic configs {unknown}; choose from {PARQUET_CONFIGS}.")
    settings = dict(num_subjects=num_subjects, data_seed=data_seed, protocol="all7", seed=data_seed,
                    num_folds=num_folds or min(10, num_subjects))  # fmt: skip
    counts = {}
    with tempfile.TemporaryDirectory(prefix="facet-vlm-synthetic-") as scratch:
        for config in configs:
            extra = {"image_size": image_size} if config == "views" and image_size else {}
            builder = SyntheticFaces(config_name=config, cache_dir=cache_dir or scratch, **settings, **extra)
            builder.download_and_prepare()
            dataset = builder.as_dataset()["train"]
            if config == "scans":
                dataset = _with_meshes(dataset)
            dataset = dataset.map(_relative_paths, desc="Relative file paths")
            _write_parquet(dataset, Path(folder) / config, "train")
            counts[config] = len(dataset)
    return counts


def _size_category(rows: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if rows < bound:
            return name
    return "100K<n<1M"


def dataset_card(name: str, repo_id: str, parquet_rows: dict | None = None) -> DatasetCard:
    """The dataset card of a benchmark: where the data comes from and how to obtain it, how to load it with the
    builder (and, with `parquet_rows`, from the Parquet configs of this repository), its structure (the builder's
    documentation) and citation."""
    benchmark = benchmark_of(name)
    check_repo_id(repo_id)
    module = importlib.import_module(benchmark.module)
    class_name = benchmark.builder.split(":")[1]
    configs = [config.name for config in benchmark.builder_class().BUILDER_CONFIGS]
    example_config = "views" if "views" in configs else configs[0]
    source = f'data_dir="/path/to/{benchmark.name}"' if benchmark.licensed else "num_subjects=100"
    card_data = DatasetCardData(
        license=benchmark.license, pretty_name=benchmark.name, task_categories=["image-classification"],
        tags=["3d", "4d", "facial-expression-recognition", "affective-computing", "facs", "facet-vlm"],
        **({"license_name": f"{benchmark.key}-license", "license_link": benchmark.homepage}
           if benchmark.licensed and benchmark.homepage else {}),
    )  # fmt: skip
    builder_usage = (
        f"```python\n# pip install facet-vlm   (the builder code is also under code/ in this repository)\n"
        f"from {benchmark.module} import {class_name}\n\n"
        f'builder = {class_name}(config_name="{example_config}", {source}, fold=0)\n'
        f"builder.download_and_prepare()\ndataset = builder.as_dataset()  # train / test splits of fold 0\n```\n\n"
        f"Configs: {', '.join(f'`{config}`' for config in configs)}. datasets 5 no longer runs loading scripts, so "
        "the builder is a class of the package, instantiated directly."
    )
    if parquet_rows:
        card_data.size_categories = [_size_category(sum(parquet_rows.values()))]
        card_data.configs = [
            {"config_name": config, "data_files": [{"split": "train", "path": f"{config}/train-*.parquet"}],
             **({"default": True} if config == "views" else {})} for config in parquet_rows
        ]  # fmt: skip
        rows = ", ".join(f"`{config}`: {count} rows" for config, count in parquet_rows.items())
        description = (
            f"Procedurally generated 3D faces with known FACS action units, in the layout of BU-3DFE. This repository "
            f"holds the data as Parquet ({rows}; one `train` split whose `fold` column gives each subject's "
            f"subject-independent fold), and the builder code that generates it.\n\n"
            f"```python\nfrom datasets import load_dataset\n\n"
            f'views = load_dataset("{repo_id}", "views", split="train")   # pixel_values (V, C, H, W)\n'
            f'scans = load_dataset("{repo_id}", "scans", split="train")   # vertices, faces\n\n'
            "from transformers import pipeline\n"
            'classifier = pipeline(model="<a FACET-VLM model>", trust_remote_code=True)\n'
            'classifier({"vertices": scans[0]["vertices"], "faces": scans[0]["faces"]})\n```\n\n'
            f"To generate a different set with the package:\n\n{builder_usage}"
        )
    else:
        description = (
            f"**This repository holds no data.** {benchmark.name} belongs to {benchmark.owners} and is distributed "
            f"under its owners' license only.\n\n**How to obtain it:** {benchmark.obtain}"
            + (f" Web page: {benchmark.homepage}" if benchmark.homepage else "")
            + f"\n\n**How to load it** once you have it, unchanged as its owners ship it:\n\n{builder_usage}"
        )
    fields = dict(
        dataset_summary=f"{benchmark.name} for 3D/4D facial expression recognition with FACET-VLM.",
        dataset_description=description,
        curators=benchmark.owners,
        repo=benchmark.homepage,
        direct_use="Training and evaluating 3D/4D facial expression and action-unit recognition under the "
                   "benchmark's subject-independent protocols (the builder's `protocol`, `fold` and `num_folds`).",
        out_of_scope_use="Identifying people, inferring inner emotional states for decisions about them, and any use "
                         "the owners' license does not allow.",
        dataset_structure=f"The `{class_name}` builder's documentation:\n\n```text\n{module.__doc__.strip()}\n```",
        data_collection_and_processing_section=(
            "The builder reads the files as their owners ship them (typed errors name any malformed file). Its "
            "`views` configs clean each scan, centre it on the nose tip, scale it to a fixed face size and render "
            "the configured (yaw, pitch) views (shaded, depth and surface-normal channels by default); the result is "
            "cached per view setting and data fingerprint."
        ),
        source_data_producers_section=benchmark.owners,
        personal_and_sensitive_information=(
            "None: the faces are generated, no real person is depicted." if not benchmark.licensed else
            "3D face scans are biometric data of the people who were scanned; keep them under the license terms."),
        bias_risks_limitations="Few subjects, mostly young adults scanned in a laboratory, with posed or elicited "
                               "expressions; results do not transfer automatically to other populations or settings.",
        citation_bibtex=benchmark.citation and f"```bibtex\n{benchmark.citation}\n```",
        dataset_card_authors="The FACET-VLM package (`facet-vlm publish-dataset`).",
    )  # fmt: skip
    return DatasetCard.from_template(card_data, **{key: value for key, value in fields.items() if value})


def build_dataset_repo(name: str, folder, repo_id: str, **synthetic_settings) -> Path:
    """Write a benchmark's Hub dataset repository into `folder`: README.md (the card), the builder code under
    `code/datasets_scripts/` and, for the synthetic benchmark only, its data as Parquet ([`synthetic_parquet`],
    which takes `synthetic_settings`)."""
    benchmark = benchmark_of(name)
    folder = Path(folder)
    if synthetic_settings and benchmark.licensed:
        raise ValueError(f"{benchmark.name} is licensed data: only the card and the builder code are published.")
    code = folder / "code" / "datasets_scripts"
    code.mkdir(parents=True, exist_ok=True)
    for source in builder_sources(benchmark.module):
        shutil.copy2(source, code / source.name)
    rows = None if benchmark.licensed else synthetic_parquet(folder, **synthetic_settings)
    dataset_card(name, repo_id, rows).save(folder / "README.md")
    return folder


def publish_dataset_card(name: str, repo_id: str, *, private: bool = False, revision: str | None = None,
                         dry_run: bool = False, output=None, commit_message: str | None = None, token=None,
                         **synthetic_settings) -> dict:  # fmt: skip
    """Build the dataset repository of benchmark `name` ([`build_dataset_repo`]) and, unless `dry_run`, push it as a
    Hub dataset. Licensed benchmarks get the card and builder code only; "synthetic" also gets its Parquet data."""
    return build_and_push(lambda folder: build_dataset_repo(name, folder, repo_id, **synthetic_settings), repo_id,
                          "dataset", private, revision, dry_run, output, commit_message, token)  # fmt: skip


__all__ = ["build_dataset_repo", "dataset_card", "publish_dataset_card", "synthetic_parquet"]
