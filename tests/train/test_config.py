"""Training configs: YAML round trip, --set overrides, and errors that name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from medenhance.errors import ConfigError
from medenhance.train.config import TrainConfig, apply_overrides, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["xray-denoise", "mri-denoise"])
def test_bundled_configs_load(name: str) -> None:
    config = load_config(ROOT / "configs" / f"{name}.yaml")
    assert config.name == name and config.model.name == "fastunet"
    assert config_from_dict(config.to_dict()) == config


def test_overrides_parse_yaml_values() -> None:
    config = apply_overrides(TrainConfig(), ["optim.lr=1e-3", "optim.epochs=3", "amp=false",
                                             "model.args.widths=[8, 8, 16]", "max_minutes=1.5"])
    assert config.optim.lr == 1e-3 and config.optim.epochs == 3 and config.amp is False
    assert config.model.args == {"widths": [8, 8, 16]} and config.max_minutes == 1.5


@pytest.mark.parametrize(("override", "message"), [
    ("optim.lrr=1", "unknown key 'optim.lrr'"),
    ("optim.lr=fast", "optim.lr: expected float"),
    ("optim.epochs=2.5", "optim.epochs: expected int"),
    ("lr", "expected key=value"),
    ("model.args=blocks", r"model.args: expected dict such as \{key: value\}, got 'blocks'"),
    ("data.degradations=gaussian-25", r"expected list such as \[a, b\]"),
])
def test_bad_overrides(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        apply_overrides(TrainConfig(), [override])


def test_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ndata: {manifest: m.csv, patch_sise: 64}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: data: unknown key\(s\) patch_sise"):
        load_config(path)
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    path.write_text("name: x\n")
    with pytest.raises(ConfigError, match="data.manifest is not set"):
        load_config(path)
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(("extra", "message"), [
    ("[{weight: 0.3}]", r"extra_train\[0\]: needs a 'manifest'"),
    ("[{manifest: m.csv, weight: 0.3, spilt: val}]", r"unknown key\(s\) spilt"),
    ("[{manifest: m.csv, weight: 0.6}, {manifest: n.csv, weight: 0.5}]", "add up to"),
    ("[{manifest: m.csv}]", "add up to"),
])
def test_bad_extra_training_sets(extra: str, message: str) -> None:
    config = apply_overrides(TrainConfig(), ["data.manifest=m.csv", f"data.extra_train={extra}"])
    with pytest.raises(ConfigError, match=message):
        config.validate()


@pytest.mark.parametrize(("override", "message"), [
    ("name=../elsewhere", "cannot name a model"),
    ("name=xray/v2", "cannot name a model"),
    ("data.degradations=[{preset: jpeg, wieght: 1}]", r"unknown key\(s\) wieght"),
    ("data.degradations=[{preset: jpeg, weight: abc}]", "weight must be a number >= 0"),
    ("loss={l1: abc}", "the weight of l1 must be a number"),
    ("loss={l3: 1}", r"unknown term\(s\) l3"),
    ("name=v2.safetensors", "cannot name a model"),
])
def test_values_that_would_fail_later_are_refused_at_once(override: str, message: str) -> None:
    config = apply_overrides(TrainConfig(), ["data.manifest=m.csv", override])
    with pytest.raises(ConfigError, match=message):
        config.validate()


def test_extra_training_weight_must_be_a_number() -> None:
    config = apply_overrides(TrainConfig(), ["data.manifest=m.csv",
                                             "data.extra_train=[{manifest: n.csv, weight: lots}]"])
    with pytest.raises(ConfigError, match="weight must be a number, got 'lots'"):
        config.validate()


def test_errors_name_the_file_or_the_set_item_they_come_from(tmp_path: Path) -> None:
    from medenhance.triage.train import load_triage_config

    denoise, triage = ROOT / "configs" / "xray-denoise.yaml", ROOT / "configs" / "mri-triage.yaml"
    with pytest.raises(ConfigError, match=r"^--set 'optim.epochs=x': optim.epochs: expected int"):
        load_config(denoise, ["optim.epochs=x"])
    with pytest.raises(ConfigError, match=r"^--set 'epochs=abc': epochs: expected int"):
        load_triage_config(triage, ["epochs=abc"])
    with pytest.raises(ConfigError, match=r"^--set 'epoch=3': unknown key 'epoch'; known: "):
        load_triage_config(triage, ["epoch=3"])
    # Valid alone, invalid only with the file's other values: both are named.
    with pytest.raises(ConfigError, match=r"mri-triage.yaml with --set size=40: size must be"):
        load_triage_config(triage, ["size=40"])
    with pytest.raises(ConfigError, match=r"xray-denoise.yaml with --set optim.lr=0: optim.lr"):
        load_config(denoise, ["optim.lr=0"])
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs" / "mri-triage.yaml").read_text() + "epochs: many\n")
    with pytest.raises(ConfigError, match=r"^\S*bad.yaml: epochs: expected int"):
        load_triage_config(bad, ["lr=0.1"])


def test_a_set_item_can_mend_a_wrong_value_in_the_file(tmp_path: Path) -> None:
    from medenhance.triage.train import load_triage_config

    path = tmp_path / "t.yaml"
    path.write_text("name: t\nkind: oneclass\ndata: x\nepochs: none-yet\ninit_from: xray-triage\n")
    assert load_triage_config(path, ["epochs=0"]).epochs == 0
    with pytest.raises(ConfigError, match=r"t.yaml: epochs: expected int, got 'none-yet'"):
        load_triage_config(path, ["lr=0.1"])
