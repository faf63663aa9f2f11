"""Settings of the app (model folder, upload limit) from its script arguments and environment, and the
`streamlit run` command line that `facet-vlm app` starts."""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path


DEFAULT_MODEL_DIR = "outputs/demo/model"  # where the main job (`facet-vlm demo`) saves its model
DEFAULT_MAX_UPLOAD_MB = 100.0
MODEL_ENV = "FACET_APP_MODEL"
MAX_UPLOAD_ENV = "FACET_APP_MAX_UPLOAD_MB"
STREAMLIT_DEFAULT_UPLOAD_MB = 200  # Streamlit's own server.maxUploadSize default
MAX_CANDIDATE_LABELS = 50  # every label is a prompt through the text tower: 4,000 took 11.9 s and +920 MB
APP_SCRIPT = Path(__file__).resolve().parent / "streamlit_app.py"


def positive_megabytes(text) -> float:
    """A positive, finite number of megabytes from `text` (an argparse type)."""
    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"upload limit must be a number of megabytes, got {text!r}") from error
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"upload limit must be a positive number of megabytes, got {text!r}")
    return value


@dataclass(frozen=True)
class AppSettings:
    """What the app starts with: the model folder and the largest upload it accepts, in megabytes."""

    model_dir: str = DEFAULT_MODEL_DIR
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @classmethod
    def from_args(cls, argv=None, environ=None) -> "AppSettings":
        """Script arguments (`--model`, `--max-upload-mb`) win over the environment (`FACET_APP_MODEL`,
        `FACET_APP_MAX_UPLOAD_MB`), which wins over the defaults. Arguments the app does not know are ignored, as
        the script may run inside another program (`AppTest` under pytest).

        Raises:
            ValueError: an upload limit that is not a positive number.
        """
        environ = os.environ if environ is None else environ
        parser = argparse.ArgumentParser(
            prog="streamlit_app.py", allow_abbrev=False, add_help=False, exit_on_error=False
        )
        parser.add_argument("--model", default=environ.get(MODEL_ENV) or DEFAULT_MODEL_DIR)
        parser.add_argument("--max-upload-mb", type=positive_megabytes, default=None)
        try:
            args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
        except argparse.ArgumentError as error:
            raise ValueError(str(error)) from error
        limit = args.max_upload_mb
        if limit is None:
            try:
                limit = positive_megabytes(environ.get(MAX_UPLOAD_ENV) or DEFAULT_MAX_UPLOAD_MB)
            except argparse.ArgumentTypeError as error:
                raise ValueError(f"{MAX_UPLOAD_ENV}: {error}") from error
        return cls(model_dir=args.model, max_upload_mb=limit)


def check_label_count(labels: list) -> list:
    """`labels` when there are at most MAX_CANDIDATE_LABELS of them.

    Raises:
        ValueError: more labels than that, saying how many there are.
    """
    if len(labels) > MAX_CANDIDATE_LABELS:
        raise ValueError(f"{len(labels):,} candidate labels: the app scores at most {MAX_CANDIDATE_LABELS} at a time.")
    return labels


def streamlit_command(model_dir: str, port: int, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB) -> list:
    """The `streamlit run` command line of the app, served headless on 127.0.0.1:`port`. Streamlit's own upload
    limit is kept at or above the app's, so that the app's clearer message is the one a user sees."""
    server_limit = max(STREAMLIT_DEFAULT_UPLOAD_MB, math.ceil(max_upload_mb))
    return [
        sys.executable, "-m", "streamlit", "run", str(APP_SCRIPT),
        "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
        "--browser.gatherUsageStats", "false", "--server.maxUploadSize", str(server_limit),
        "--client.toolbarMode", "viewer",
        "--", "--model", str(model_dir), "--max-upload-mb", str(max_upload_mb),
    ]  # fmt: skip
