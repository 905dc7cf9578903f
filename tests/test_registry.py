"""The model registry (store/models/registry.py): the one list of models, importable without torch,
each name resolving to its module's spec, each model's own flags on ``--model.<name>.*``, and no
other list of model names in the packages. (Every registered model is built and run forward by
tests/test_models.py, whose VARIANTS start from ``registry.names()``.)"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from store.models import registry

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data_pipeline", "store", "trainer", "launch", "benchmarks")


def test_the_registry_and_the_torchx_component_import_no_torch():
    code = "import sys, store.models.registry, launch.store; print(sorted(m for m in sys.modules if m == 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", registry.names())
def test_every_name_resolves_to_its_modules_spec(name):
    spec = registry.get(name)
    assert spec.name == name and callable(spec.build) and spec.sparse_lr > 0
    module = importlib.import_module(registry.MODELS[name])
    assert spec in (getattr(module, "SPECS", None) or (module.SPEC,))
    if spec.config is not None:  # its own group: defaults for every field, a docstring per field
        assert dataclasses.is_dataclass(spec.config)
        spec.config()


def test_an_unknown_name_lists_the_choices():
    with pytest.raises(
        ValueError,
        match=r"unknown model 'gbdt'; choose one of store, id, id-hash, sid-prefix, hybrid, id-zch, dnn, .*, ssr",
    ):
        registry.get("gbdt")


def test_each_models_own_config_is_its_flag_group():
    from store.models.config import ModelConfig
    from trainer.config import parse_args

    groups = {s.group: s.config for s in registry.specs() if s.config is not None}
    assert {"dcn", "gdcn", "autoint", "rankmixer", "masknet", "ssr"} <= set(groups)
    cfg = ModelConfig()
    assert all(isinstance(getattr(cfg, name), group) for name, group in groups.items())
    data = str(ROOT / "tests")  # parse_args checks only that --data is a folder
    flags = ["--data", data, "--model.masknet.mode", "serial", "--model.ssr.views", "2"]
    flags += ["--model.dcn.cross_layers", "5", "--model.autoint.layers", "1"]
    m = parse_args(flags).model_config
    assert (m.masknet.mode, m.ssr.views, m.dcn.cross_layers, m.autoint.layers) == ("serial", 2, 5, 1)
    assert m.gdcn.cross_layers == 3  # each model its own default


def _model_lists(path: Path, names: set[str]) -> list[str]:
    """Tuple, list and set literals naming 3+ registered models in the source file ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            named = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in names]
            if len(named) >= 3:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {named}")
    return found


def test_no_other_list_of_models_in_the_packages():
    names = set(registry.names())
    own = ROOT / "store" / "models" / "registry.py"
    sources = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py")) if p != own]
    assert len(sources) > 20
    found = [hit for path in sources for hit in _model_lists(path, names)]
    assert not found, "models listed outside store/models/registry.py:\n" + "\n".join(found)
