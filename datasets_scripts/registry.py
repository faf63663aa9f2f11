"""The benchmarks in one place: each one's builder, owners, how to obtain it, license, homepage and citation (what
its `DatasetInfo` and its Hub cards say), and the training datasets read from their builders (`facet-vlm train
--dataset NAME`: a builder config and its label column)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Benchmark:
    """What a card says about a benchmark: its builder, owners, where to get it, its license and citation."""

    name: str
    builder: str  # "datasets_scripts.<module>:<Class>"
    owners: str
    obtain: str
    license: str
    homepage: str | None
    citation: str | None

    @property
    def module(self) -> str:
        return self.builder.split(":")[0]

    @property
    def key(self) -> str:
        return self.module.rsplit(".", 1)[1]

    @property
    def licensed(self) -> bool:
        return self.license == "other"

    def builder_class(self):
        module, name = self.builder.split(":")
        return getattr(importlib.import_module(module), name)


_BINGHAMTON = (
    "Request it from Binghamton University (Prof. Lijun Yin's group) through the database's web page: a license "
    "agreement signed by a permanent faculty member or researcher of the requesting institution is required, and "
    "the data may not be redistributed."
)
BENCHMARKS = {
    benchmark.key: benchmark
    for benchmark in (
        Benchmark(
            name="BU-3DFE", builder="datasets_scripts.bu3dfe:BU3DFE", owners="Binghamton University (Lijun Yin et al.)",
            obtain=_BINGHAMTON, license="other",
            homepage="https://www.cs.binghamton.edu/~lijun/Research/3DFE/3DFE_Analysis.html",
            citation="""@inproceedings{yin2006bu3dfe,
  title     = {A {3D} Facial Expression Database for Facial Behavior Research},
  author    = {Yin, Lijun and Wei, Xiaozhou and Sun, Yi and Wang, Jun and Rosato, Matthew J.},
  booktitle = {7th International Conference on Automatic Face and Gesture Recognition (FGR06)},
  pages     = {211--216},
  year      = {2006}
}""",
        ),
        Benchmark(
            name="Bosphorus", builder="datasets_scripts.bosphorus:Bosphorus",
            owners="Bogazici University (Arman Savran, Bulent Sankur, Lale Akarun et al.)",
            obtain="Request it from Bogazici University through the Bosphorus database web page and sign its license "
                   "agreement (research use only, no redistribution).",
            license="other", homepage="http://bosphorus.ee.boun.edu.tr/default.aspx",
            citation="""@inproceedings{savran2008bosphorus,
  title     = {Bosphorus Database for {3D} Face Analysis},
  author    = {Savran, Arman and Aly{\\"u}z, Ne{\\c{s}}e and Dibeklio{\\u{g}}lu, Hamdi and {\\c{C}}eliktutan, Oya and G{\\"o}kberk, Berk and Sankur, B{\\"u}lent and Akarun, Lale},
  booktitle = {Biometrics and Identity Management (BioID 2008)},
  series    = {Lecture Notes in Computer Science},
  volume    = {5372},
  pages     = {47--56},
  publisher = {Springer},
  year      = {2008}
}""",
        ),
        Benchmark(
            name="BU-4DFE", builder="datasets_scripts.bu4dfe:BU4DFE", owners="Binghamton University (Lijun Yin et al.)",
            obtain=_BINGHAMTON, license="other",
            homepage="https://www.cs.binghamton.edu/~lijun/Research/3DFE/3DFE_Analysis.html",
            citation="""@inproceedings{yin2008bu4dfe,
  title     = {A High-Resolution {3D} Dynamic Facial Expression Database},
  author    = {Yin, Lijun and Chen, Xiaochen and Sun, Yi and Worm, Tony and Reale, Michael},
  booktitle = {8th IEEE International Conference on Automatic Face and Gesture Recognition (FG 2008)},
  year      = {2008}
}""",
        ),
        Benchmark(
            name="BP4D-Spontaneous", builder="datasets_scripts.bp4d:BP4D",
            owners="Binghamton University and the University of Pittsburgh (Xing Zhang, Lijun Yin, Jeffrey Cohn et al.)",
            obtain=_BINGHAMTON, license="other",
            homepage="https://www.cs.binghamton.edu/~lijun/Research/3DFE/3DFE_Analysis.html",
            citation="""@article{zhang2014bp4d,
  title   = {{BP4D-Spontaneous}: a high-resolution spontaneous {3D} dynamic facial expression database},
  author  = {Zhang, Xing and Yin, Lijun and Cohn, Jeffrey F. and Canavan, Shaun and Reale, Michael and Horowitz, Andy and Liu, Peng and Girard, Jeffrey M.},
  journal = {Image and Vision Computing},
  volume  = {32},
  number  = {10},
  pages   = {692--706},
  year    = {2014}
}""",
        ),
        Benchmark(
            name="4DME", builder="datasets_scripts.fourdme:FourDME",
            owners="the University of Oulu, Center for Machine Vision and Signal Analysis (Xiaobai Li, Guoying Zhao et al.)",
            obtain="Request it from its authors at the University of Oulu (see the 4DME paper) and sign their license "
                   "agreement; arrange the clips in the layout described under Dataset Structure.",
            license="other", homepage=None,
            citation="""@article{li2022fourdme,
  title   = {{4DME}: A Spontaneous {4D} Micro-Expression Dataset With Multimodalities},
  author  = {Li, Xiaobai and Cheng, Shiyang and Li, Yante and Behzad, Muzammil and Shen, Jie and Zafeiriou, Stefanos and Pantic, Maja and Zhao, Guoying},
  journal = {IEEE Transactions on Affective Computing},
  year    = {2022}
}""",
        ),
        Benchmark(
            name="SyntheticFaces", builder="datasets_scripts.synthetic:SyntheticFaces",
            owners="the FACET-VLM package (procedurally generated; no real person is depicted)",
            obtain="Nothing to obtain: the Parquet files of this repository hold the data, and the package generates "
                   "more with any number of subjects and seeds.",
            license="apache-2.0", homepage=None, citation=None,
        ),
    )
}  # fmt: skip


@dataclass(frozen=True)
class DatasetSpec:
    """A training dataset: a config of a benchmark's builder and its label column (a ClassLabel, or a multi-hot
    column whose names the builder's `LABEL_NAMES` gives)."""

    benchmark_key: str
    config_name: str
    label_field: str = "expression"
    multi_label: bool = False

    @property
    def benchmark(self) -> Benchmark:
        return BENCHMARKS[self.benchmark_key]

    def builder_class(self):
        return self.benchmark.builder_class()

    def multi_label_names(self) -> list:
        """Names of the multi-hot label column ("AU12", 4DME's five emotions)."""
        return list(self.builder_class().LABEL_NAMES[self.label_field])


DATASETS = {
    "synthetic": DatasetSpec("synthetic", "views"),
    "synthetic4d": DatasetSpec("synthetic", "sequence_views"),
    "synthetic_aus": DatasetSpec("synthetic", "views", "aus", multi_label=True),
    "bu3dfe": DatasetSpec("bu3dfe", "views"),
    "bosphorus": DatasetSpec("bosphorus", "views"),
    "bu4dfe": DatasetSpec("bu4dfe", "views"),
    "bp4d": DatasetSpec("bp4d", "views", "aus", multi_label=True),
    "bp4d_emotions": DatasetSpec("bp4d", "views"),
    "fourdme": DatasetSpec("fourdme", "views", "emotions", multi_label=True),
}


def benchmark_of(dataset: str) -> Benchmark:
    """The benchmark of a training dataset name ("bu3dfe", "synthetic_aus", "bp4d_emotions", ...) or of a builder
    module name ("synthetic", "fourdme")."""
    key = DATASETS[dataset].benchmark_key if dataset in DATASETS else dataset
    if key not in BENCHMARKS:
        raise ValueError(f"Unknown dataset {dataset!r}; choose one of {sorted(set(DATASETS) | set(BENCHMARKS))}.")
    return BENCHMARKS[key]
