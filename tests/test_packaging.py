"""setup.py ships every package of the checkout, so `facet-vlm` works from any directory after `pip install`."""

import ast
import json
import os
import subprocess
import sys
import zipfile
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


def test_a_wheel_ships_the_packages_their_data_and_the_model_card(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(tmp_path), str(ROOT)], check=True, capture_output=True)  # fmt: skip
    (wheel,) = tmp_path.glob("facet_vlm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"app/settings.py", "training/configs/demo.yaml", "training/metrics/facet_accuracy/facet_accuracy.py"} <= names
    assert any(name.endswith(".data/data/share/facet-vlm/model_card.md") for name in names)


def test_publish_finds_the_model_card_in_the_checkout_or_the_install_prefix(tmp_path):
    from training.publish import find_model_card_template

    assert find_model_card_template() == ROOT / "model_card.md"
    installed = tmp_path / "prefix" / "share" / "facet-vlm" / "model_card.md"
    installed.parent.mkdir(parents=True)
    installed.write_text("card")
    assert find_model_card_template(tmp_path / "site-packages", tmp_path / "prefix") == installed


def test_the_configuration_is_a_leaf():
    # Loading FacetVLMConfig as remote code (its file and what it imports relatively, without the package's
    # __init__) imports no module of ours beyond the config and no third-party library beyond transformers.
    # transformers 5 itself imports torch for PreTrainedConfig, so torch is checked where it is still absent.
    code = f"""if True:
        import json, sys, types
        torch_before = "torch" in sys.modules
        from transformers import AutoConfig, PreTrainedConfig
        from transformers.configuration_utils import SubConfigSpec
        before = set(sys.modules)
        package = types.ModuleType("remote_code")
        package.__path__ = [{str(ROOT / "modeling_facet")!r}]
        sys.modules["remote_code"] = package
        from remote_code.configuration_facet import FacetVLMConfig
        FacetVLMConfig.from_preset("tiny", channels=["depth", "normals"])
        new = sorted(name for name in set(sys.modules) - before if not name.startswith("transformers."))
        print(json.dumps(dict(new=new, torch="torch" in sys.modules, torch_by_transformers="torch" in before)))
    """
    result = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    report = json.loads(result.stdout)
    ours = ["remote_code", "remote_code.configuration_facet", "remote_code.prompts", "remote_code.render_settings"]
    assert report["new"] == ours  # the label names come from prompts.py, which needs only numpy and re
    assert report["torch"] == report["torch_by_transformers"]


def test_the_command_line_imports_neither_app_nor_benchmarks_and_training_sets_no_environment():
    # `facet-vlm app` and `facet-vlm bench` start `python -m app` / `python -m benchmarks`: the CLI (training) and the
    # programs above it never import each other, and importing training leaves the environment alone.
    code = """if True:
        import json, os, sys
        import training, training.cli, training.config
        training.cli.build_parser()
        upward = sorted(name for name in sys.modules if name.split(".")[0] in ("app", "benchmarks"))
        print(json.dumps([upward, os.environ.get("OMP_WAIT_POLICY")]))
    """
    environment = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True,
                            check=True)  # fmt: skip
    assert json.loads(result.stdout) == [[], None]


def test_the_remote_code_names_pillow_when_it_is_missing():
    # Without Pillow transformers swaps its image-processor base classes for dummies, and loading a processor would
    # fail with "... but a ImageProcessingMixin was expected"; the remote code says what to install instead.
    code = f"""if True:
        import sys, types
        import transformers.image_processing_utils, transformers.utils
        transformers.utils.is_vision_available = lambda: False  # what transformers reports without Pillow
        package = types.ModuleType("remote_code")
        package.__path__ = [{str(ROOT / "modeling_facet")!r}]
        sys.modules["remote_code"] = package
        try:
            import remote_code.image_processing_facet
        except ImportError as error:
            print(error)
    """
    result = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    assert "pip install pillow trimesh" in result.stdout
    card = (ROOT / "model_card.md").read_text()
    assert "pip install pillow trimesh" in card


def test_the_file_writers_stay_out_of_the_remote_code():
    # The byte-exact writers serve the synthetic data, the benchmarks and the tests, not a published model.
    from datasets_scripts import scan_writers
    from modeling_facet import mesh_io

    assert not [name for name in vars(mesh_io) if name.startswith("write_")]
    assert {"write_wrl", "write_bnt", "write_bnd", "write_lm3", "write_lm2"} <= set(vars(scan_writers))
