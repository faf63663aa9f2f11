"""setup.py ships every package of the checkout, so `facet-vlm` works from any directory after `pip install`."""

import ast
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
