"""`python -m app` (what `facet-vlm app` starts): serve the Streamlit app on 127.0.0.1."""

from __future__ import annotations

import argparse
import importlib.util
import os

from app.settings import DEFAULT_MAX_UPLOAD_MB, DEFAULT_MODEL_DIR, positive_megabytes, streamlit_command


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="facet-vlm app", description="Serve the Streamlit app on 127.0.0.1.")
    parser.add_argument("--model", default=DEFAULT_MODEL_DIR, help="a FACET-VLM folder (default: the main job's model)")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--max-upload-mb", type=positive_megabytes, default=DEFAULT_MAX_UPLOAD_MB,
                        help="largest accepted upload")  # fmt: skip
    args = parser.parse_args(argv)
    if importlib.util.find_spec("streamlit") is None:
        raise SystemExit('facet-vlm app: Streamlit is not installed; install it with pip install -e ".[app]"')
    command = streamlit_command(args.model, args.port, args.max_upload_mb)
    print("+ " + " ".join(command), flush=True)
    os.execv(command[0], command)  # the server takes this process's place (and PID)


if __name__ == "__main__":
    main()
