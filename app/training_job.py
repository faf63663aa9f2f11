"""Running the main job's training (`facet-vlm demo`) from the app in a child process, with its progress read from
the tqdm bars it prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_SUBFOLDER = "model"
# A tqdm bar line: "training:  45%|####      | 45/100 [...]" (the description is optional).
_TQDM_LINE = re.compile(r"^(?:(?P<stage>[^:|]*?):\s*)?(?P<percent>\d{1,3})%\|")
_LOG_LINES = 20


@dataclass(frozen=True)
class Progress:
    """One progress report of the job: the stage (tqdm's description) and its fraction done."""

    stage: str
    fraction: float


class TrainingFailed(RuntimeError):
    """The training job exited with an error; the message holds the end of its output."""


def training_output(model_dir) -> Path:
    """The folder the demo trains into so that the model lands in `model_dir`: the main job writes its model to
    OUTPUT/model, so for a folder named "model" that is its parent, otherwise the folder itself (the model then
    lands in `model_dir`/model)."""
    model_dir = Path(model_dir).resolve()
    return model_dir.parent if model_dir.name == MODEL_SUBFOLDER else model_dir


def confined_output(model_dir) -> Path:
    """The folder the demo would train into for `model_dir` (see `training_output`), which must lie under the app's
    working directory: whoever can reach the page may not make it write anywhere else on the server.

    Raises:
        ValueError: the folder is outside the working directory, with the command to run instead.
    """
    output, root = training_output(model_dir), Path.cwd().resolve()
    if not output.is_relative_to(root):
        raise ValueError(f"The app trains only into folders under its working directory {root}; {output} is not. "
                         f"Train there yourself with `facet-vlm demo --output {output}`.")  # fmt: skip
    return output


def demo_command(output, num_subjects: int) -> list:
    """The command line of the main job (`facet-vlm demo`) training into `output` on `num_subjects` subjects."""
    return [sys.executable, "-m", "training.cli", "demo", "--output", str(output), "--subjects", str(num_subjects)]


def parse_progress(line: str):
    """The Progress of a tqdm bar line, or None for any other output."""
    match = _TQDM_LINE.match(line.strip())
    if match is None:
        return None
    return Progress(stage=(match["stage"] or "working").strip(), fraction=min(int(match["percent"]), 100) / 100)


def _lines(stream):
    """The stream's output split at newlines and at tqdm's carriage returns."""
    buffer = ""
    for chunk in iter(lambda: stream.read(256), ""):
        buffer += chunk
        *complete, buffer = re.split(r"[\r\n]", buffer)
        yield from (line for line in complete if line.strip())
    if buffer.strip():
        yield buffer


def run_training(output, num_subjects: int):
    """Runs the main job's training into `output` and yields a Progress for each update of its progress bars; ends
    when the job has written `output`/model. The job is stopped if the caller stops iterating early.

    Raises:
        TrainingFailed: the job exited with an error (the message holds the end of its output).
    """
    command = demo_command(output, num_subjects)
    python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    environment = dict(os.environ, PYTHONPATH=python_path)
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=environment, errors="replace",
    )  # fmt: skip
    log = deque(maxlen=_LOG_LINES)
    try:
        for line in _lines(process.stdout):
            progress = parse_progress(line)
            if progress is None:
                log.append(line)
            else:
                yield progress
        if process.wait() != 0:
            raise TrainingFailed(f"`{' '.join(command)}` exited with code "
                                 f"{process.returncode}:\n" + "\n".join(log))  # fmt: skip
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait()
        process.stdout.close()
