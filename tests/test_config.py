"""Config: YAML + overrides, validation naming key and value, every shipped config and ds_config loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from turbo_ds.config import (
    ConfigError,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    flatten,
    load_config,
    save_config,
)
from turbo_ds.engine.ds_config import fill_ds_config, load_ds_config, precision, zero_stage

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
DS_CONFIGS = sorted((ROOT / "ds_configs").glob("*.json"))


def test_defaults_are_valid():
    cfg = config_from_dict({})
    assert isinstance(cfg, TrainConfig) and cfg.optim.lr > 0
    assert (cfg.data.backend, cfg.data.decode_device) == ("auto", "cpu")
    for backend in ("auto", "torchcodec", "decord", "pyav"):
        assert config_from_dict({"data": {"backend": backend}}).data.backend == backend
    cuda = config_from_dict({"data": {"decode_device": "cuda", "backend": "torchcodec", "num_workers": 0}})
    assert cuda.data.decode_device == "cuda"  # whether this machine has CUDA is checked at loader build


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=r"'optim.learning_rate'.*valid keys.*lr"):
        config_from_dict({"optim": {"learning_rate": 1e-3}})
    with pytest.raises(ConfigError, match=r"'optimizer'"):
        config_from_dict({"optimizer": {}})


@pytest.mark.parametrize(
    "data, key, value",
    [
        ({"token_dropout": {"drop_ratio": 1.5}}, "token_dropout.drop_ratio", "1.5"),
        ({"optim": {"lr": -1}}, "optim.lr", "-1"),
        ({"optim": {"micro_batch_size": "8"}}, "optim.micro_batch_size", "'8'"),
        ({"model": {"activation_checkpointing": "yes"}}, "model.activation_checkpointing", "'yes'"),
        ({"train": {"max_steps": 0}}, "train.max_steps", "0"),
        ({"data": {"test_crops": 2}}, "data.test_crops", "2"),
        ({"data": {"backend": "opencv"}}, "data.backend", "'opencv'"),
        ({"data": {"decode_device": "gpu"}}, "data.decode_device", "'gpu'"),
        ({"data": {"decode_device": "cuda", "num_workers": 2}}, "data.num_workers", "2"),
        ({"data": {"decode_device": "cuda", "backend": "decord"}}, "data.backend", "'decord'"),
        ({"tracking": {"enabled": "true"}}, "tracking.enabled", "'true'"),
        (
            {"token_dropout": {"final_dense_steps": 50}, "train": {"max_steps": 10}},
            "token_dropout.final_dense_steps",
            "50",
        ),
    ],
)
def test_bad_value_names_key_and_value(data, key, value):
    with pytest.raises(ConfigError) as e:
        config_from_dict(data)
    assert f"'{key}' = {value}" in str(e.value)


def test_overrides_yaml_typed_and_roundtrip(tmp_path):
    src = tmp_path / "c.yaml"
    src.write_text("optim: {lr: 0.1}\ndata: {num_frames: 8}\n")
    cfg = load_config(
        src, ["optim.lr=3e-4", "token_dropout.drop_ratio=0.75", "data.test_split=null", "pmae.enabled=true"]
    )
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.token_dropout.drop_ratio == 0.75
    assert cfg.data.test_split is None and cfg.pmae.enabled is True and cfg.data.num_frames == 8
    out = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(out) == cfg
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(src, ["optim.lr"])
    with pytest.raises(ConfigError, match="'optim.lrr'"):
        load_config(src, ["optim.lrr=1"])


def test_tracking_tags_are_strings_named_as_mlflow_allows():
    tags = ['tracking.tags={"turbo_ds.sweep.token_dropout.drop_ratio": "0.5", owner: me/team}']
    assert load_config(None, tags).tracking.tags == {
        "turbo_ds.sweep.token_dropout.drop_ratio": "0.5",
        "owner": "me/team",
    }
    for tag, message in [
        ("{lr: 0.5}", "config key 'tracking.tags.lr' = 0.5: must be a string"),
        ("{a!b: x}", "config key 'tracking.tags.a!b' = 'x': tag names may only hold letters, digits"),
        ("{../x: y}", "config key 'tracking.tags.../x' = 'y': tag names must be plain relative paths"),
        ("{a//b: y}", "config key 'tracking.tags.a//b' = 'y': tag names must be plain relative paths"),
        ("{1: y}", "config key 'tracking.tags.1' = 1: names must be strings"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_config(None, [f"tracking.tags={tag}"])
        assert str(e.value).startswith(message)
    with pytest.raises(ConfigError, match=r"'tracking.system_metrics_interval_s' = 0.0: must be > 0"):
        load_config(None, ["tracking.system_metrics_interval_s=0"])


def test_flatten():
    flat = flatten(config_to_dict(config_from_dict({})))
    assert flat["optim.lr"] == 1e-3 and "model.name" in flat and "seed" in flat


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.data.num_frames > 0
    # the paper configs name presets that exist
    from turbo_ds.models import list_models

    assert cfg.model.name in list_models()


def test_shipped_configs_exist():
    names = {p.name for p in CONFIGS}
    assert "demo_classification.yaml" in names and len(names) >= 3
    assert {"zero0.json", "zero1.json", "zero2.json", "zero3.json", "zero3_offload.json"} <= {
        p.name for p in DS_CONFIGS
    }


@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda p: p.name)
def test_every_ds_config_fills(path):
    raw = load_ds_config(path)
    for key in (
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
    ):
        assert raw[key] == "auto", f"{path.name}: {key} must be 'auto' (owned by the trainer config)"
    assert raw["optimizer"]["params"]["lr"] == "auto"
    cfg = config_from_dict(
        {"optim": {"micro_batch_size": 4, "grad_accum_steps": 2, "lr": 5e-4, "grad_clip": 0.5}}
    )
    ds = fill_ds_config(path, cfg, world_size=2, bf16_supported=False)
    assert ds["train_batch_size"] == 16 and ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 2 and ds["gradient_clipping"] == 0.5
    assert ds["optimizer"]["params"]["lr"] == 5e-4 and ds["optimizer"]["params"]["betas"] == [0.9, 0.999]
    assert "auto" not in json.dumps(ds)
    assert zero_stage(ds) in (0, 1, 2, 3)
    assert precision(ds) == ("fp16" if "fp16" in path.name else "fp32")
    if "fp16" not in path.name:
        assert precision(fill_ds_config(path, cfg, 2, bf16_supported=True)) == "bf16"


def test_mismatch_lists_every_field():
    ds = load_ds_config(ROOT / "ds_configs" / "zero2.json")
    ds.update(train_micro_batch_size_per_gpu=8, gradient_clipping=2.0)
    ds["optimizer"]["params"]["lr"] = 0.1
    cfg = config_from_dict({"optim": {"micro_batch_size": 4, "lr": 1e-3, "grad_clip": 1.0}})
    with pytest.raises(ValueError) as e:
        fill_ds_config(ds, cfg, world_size=1)
    msg = str(e.value)
    for field in (
        "train_micro_batch_size_per_gpu = 8",
        "gradient_clipping = 2.0",
        "optimizer.params.lr = 0.1",
    ):
        assert field in msg
    assert "optim.micro_batch_size" in msg and "optim.lr" in msg


def test_train_batch_identity_checked():
    ds = load_ds_config(ROOT / "ds_configs" / "zero2.json")
    ds["train_batch_size"] = 32
    cfg = config_from_dict({"optim": {"micro_batch_size": 4, "grad_accum_steps": 2}})
    assert fill_ds_config(ds, cfg, world_size=4)["train_batch_size"] == 32  # 4 x 2 x 4: consistent
    with pytest.raises(ValueError, match=r"train_batch_size = 32 but .* \(4 x 2 x 2\) = 16"):
        fill_ds_config(ds, cfg, world_size=2)
    cfg = config_from_dict({"optim": {"micro_batch_size": 4, "global_batch_size": 64}})
    with pytest.raises(ValueError, match="global_batch_size = 64"):
        fill_ds_config(ROOT / "ds_configs" / "zero2.json", cfg, world_size=2)


def test_scheduler_section_rejected():
    ds = load_ds_config(ROOT / "ds_configs" / "zero0.json")
    ds["scheduler"] = {"type": "WarmupLR"}
    with pytest.raises(ValueError, match="scheduler"):
        fill_ds_config(ds, config_from_dict({}), 1)
