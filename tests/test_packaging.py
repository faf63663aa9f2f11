"""setup.py ships every package of the checkout, so `facet-vlm` works from any directory after `pip install`."""

import ast
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent


def _setup_keyword(name: str):
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    call = next(node for node in calls if getattr(node.func, "id", "") == "setup")
    return ast.literal_eval(next(keyword.value for keyword in call.keywords if keyword.arg == name))


def test_every_package_of_the_checkout_is_installed():
    inits = [*ROOT.glob("*/__init__.py"), *ROOT.glob("*/*/__init__.py")]
    on_disk = {".".join(init.parent.relative_to(ROOT).parts) for init in inits} - {"tests"}
    assert on_disk == set(_setup_keyword("packages"))


def test_the_command_line_parser_starts_without_torch():
    # `facet-vlm --help` and the argument parsing of every command import torch only once a command runs.
    code = "import sys; from training.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
