import glob
import os

import pytest

from engine.config import ConfigError, apply_overrides, build_config, load_config, load_yaml
from tests.conftest import ROOT


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_base_merge_lists_replace_and_delete(tmp_path):
    write(tmp_path / "_base_/a.yaml", "optim: {lr: 0.1, momentum: 0.5, betas: [0.1, 0.2]}\n"
                                      "model: {backbone_kwargs: {x: 1, y: 2}}\n")
    cfg = write(tmp_path / "task.yaml", "_base_: _base_/a.yaml\noptim: {lr: 0.2, betas: [0.3]}\n"
                                        "model: {backbone_kwargs: {_delete_: true, z: 3}}\n")
    data = load_yaml(cfg)
    assert data["optim"] == {"lr": 0.2, "momentum": 0.5, "betas": [0.3]}
    assert data["model"]["backbone_kwargs"] == {"z": 3}


def test_overrides_are_yaml_typed():
    data = apply_overrides({"optim": {"lr": 0.1}}, ["optim.lr=2e-2", "train.seed=3", "optim.nesterov=true",
                                                    "data.source.name=usps", "optim.betas=[0.5, 0.9]"])
    assert data["optim"]["lr"] == 0.02 and data["train"]["seed"] == 3 and data["optim"]["nesterov"] is True
    assert data["data"]["source"]["name"] == "usps" and data["optim"]["betas"] == [0.5, 0.9]
    cfg = build_config(data)
    assert cfg.optim.lr == 0.02 and cfg.train.seed == 3


def test_unknown_key_names_file_and_nearest(tmp_path):
    path = write(tmp_path / "bad.yaml", "optim: {lrr: 0.1}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'optim.lrr'; did you mean 'optim.lr'"):
        load_config(path)
    with pytest.raises(ConfigError, match="did you mean 'method.weight'"):
        load_config(os.path.join(ROOT, "configs/digits/dann_optdigits.yaml"), ["method.wieght=2"])


def test_wrong_type_and_unknown_method(tmp_path):
    with pytest.raises(ConfigError, match="'train.iters' must be int"):
        build_config({"train": {"iters": "many"}})
    with pytest.raises(ConfigError, match="unknown method 'danm'.*did you mean 'dann'.*valid: .*source_only"):
        build_config({"method": {"name": "danm"}})


def test_missing_cyclic_and_deep_bases(tmp_path):
    with pytest.raises(ConfigError, match="_base_ file not found: nope.yaml"):
        load_yaml(write(tmp_path / "a.yaml", "_base_: nope.yaml\n"))
    write(tmp_path / "c1.yaml", "_base_: c2.yaml\n")
    write(tmp_path / "c2.yaml", "_base_: c1.yaml\n")
    with pytest.raises(ConfigError, match="cyclic _base_ chain"):
        load_yaml(str(tmp_path / "c1.yaml"))
    for i in range(4):
        write(tmp_path / f"d{i}.yaml", f"_base_: d{i + 1}.yaml\n" if i < 3 else "train: {seed: 1}\n")
    with pytest.raises(ConfigError, match="nested deeper than"):
        load_yaml(str(tmp_path / "d0.yaml"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(str(tmp_path / "missing.yaml"))


CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
                 if "_base_" not in p)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_config_parses(path):
    cfg = load_config(path)
    assert cfg.method.name and cfg.train.iters > 0


def test_train_py_has_no_method_branches():
    for name in ("train.py", "eval.py", "engine/trainer.py"):
        text = open(os.path.join(ROOT, name)).read()
        assert "method ==" not in text and "method.name ==" not in text, name
