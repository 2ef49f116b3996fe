"""Loading what others wrote: a pickle that would run code is refused (and does not run) without the
explicit opt-in, in every reader (pretrained weights, exports, DeepSpeed checkpoints, rank state);
safetensors and plain tensor files need no opt-in; per-rank state round-trips bit for bit."""

from __future__ import annotations

import builtins
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from turbo_ds.config import config_from_dict
from turbo_ds.engine.engine import from_plain, load_rank_state, to_plain
from turbo_ds.engine.export import consolidate, read_export
from turbo_ds.models import create_model, load_pretrained
from turbo_ds.models.pretrained import read_state_dict


class WritesMarker:
    """Unpickling this calls ``exec``, which writes a file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def tiny_vit():
    torch.manual_seed(0)
    return create_model("vit_debug", num_frames=4, img_size=32, num_classes=4)


def malicious(tmp_path: Path, payload: dict, name: str = "evil.pt") -> tuple[Path, Path]:
    """(file, marker): ``payload`` plus an entry whose unpickling writes ``marker``."""
    marker = tmp_path / "code_ran"
    path = tmp_path / name
    torch.save({**payload, "args": WritesMarker(marker)}, path)
    return path, marker


def test_pretrained_pickle_that_runs_code_is_refused_without_the_opt_in(tmp_path):
    path, marker = malicious(tmp_path, {"model": tiny_vit().state_dict()})
    with pytest.raises(ValueError, match="pretrained_trust_pickle") as err:
        load_pretrained(tiny_vit(), path)
    assert "--trust-pickle" in str(err.value) and "run any code" in str(err.value)
    assert "exec" in str(err.value)  # names what the pickle wanted to call
    assert not marker.exists()

    # The opt-in is what lets it run: then the weights load (and the code did run).
    report = load_pretrained(tiny_vit(), path, weights_only=False)
    assert report.missing == [] and report.unexpected == []
    assert marker.read_text() == "ran"


def test_config_key_is_the_opt_in_for_model_pretrained(tmp_path):
    from turbo_ds.tasks import build_model

    path, marker = malicious(tmp_path, {"model": tiny_vit().state_dict()})
    cfg = {"model": {"name": "vit_debug", "pretrained": str(path)}, "data": {"num_frames": 4, "img_size": 32}}
    with pytest.raises(ValueError, match="model.pretrained_trust_pickle=true"):
        build_model(config_from_dict(cfg), num_classes=4)
    assert not marker.exists()
    cfg["model"]["pretrained_trust_pickle"] = True
    model = build_model(config_from_dict(cfg), num_classes=4)
    assert torch.equal(model.encoder.head.weight, tiny_vit().head.weight) and marker.exists()


def test_plain_tensor_files_and_safetensors_need_no_opt_in(tmp_path):
    from safetensors.torch import save_file

    sd = tiny_vit().state_dict()
    torch.save({"state_dict": sd, "epoch": 3, "note": "plain data"}, tmp_path / "plain.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    for name in ("plain.pt", "w.safetensors"):
        got = read_state_dict(tmp_path / name)
        assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)


def test_old_pickled_export_refused_by_eval_and_read_export(tmp_path):
    from turbo_ds.loop.eval_cli import main as eval_main

    vit = tiny_vit()
    legacy = {"format": "turbo_ds", "state_dict": vit.state_dict(), "train_config": {}, "vit_config": {}}
    path, marker = malicious(tmp_path, legacy, "old_export.pt")
    with pytest.raises(ValueError, match="--trust-pickle"):
        eval_main(["--weights", str(path)])
    with pytest.raises(ValueError, match="refused to load"):
        read_export(path)
    assert not marker.exists()
    assert torch.equal(read_export(path, trust_pickle=True)["state_dict"]["head.weight"], vit.head.weight)
    assert marker.exists()

    # An old export of plain data (what torch.save wrote before safetensors) still loads, safely.
    torch.save(legacy, tmp_path / "plain_export.pt")
    assert read_export(tmp_path / "plain_export.pt")["state_dict"].keys() == vit.state_dict().keys()


def test_deepspeed_checkpoint_with_foreign_pickle_is_refused(tmp_path):
    tag = tmp_path / "ckpt" / "global_step1"
    tag.mkdir(parents=True)
    (tmp_path / "ckpt" / "latest").write_text("global_step1")
    module = {f"model.encoder.{k}": v for k, v in tiny_vit().state_dict().items()}
    _, marker = malicious(tag, {"module": module, "turbo_ds": {}}, "mp_rank_00_model_states.pt")
    with pytest.raises(ValueError, match="--trust-pickle"):
        consolidate(tmp_path / "ckpt")
    assert not marker.exists()
    sd, _ = consolidate(tmp_path / "ckpt", trust_pickle=True)
    assert sd.keys() == module.keys() and marker.exists()


def test_optimizer_shards_are_scanned_before_deepspeed_unpickles_them(tmp_path):
    from turbo_ds.engine.export import check_checkpoint_pickles

    marker = tmp_path / "code_ran"
    torch.save(
        {"optimizer_state_dict": WritesMarker(marker)}, tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    )
    with pytest.raises(ValueError, match="builtins.exec"):
        check_checkpoint_pickles(tmp_path)
    check_checkpoint_pickles(tmp_path, trust_pickle=True)  # the opt-in skips the scan
    assert not marker.exists()  # scanning never unpickles


def rng_state_now() -> dict:
    from turbo_ds.loop.rng import rng_state

    random.seed(1)
    np.random.seed(2)
    np.random.rand(3)
    torch.manual_seed(3)
    return {"rng": rng_state(), "data": {"epoch": np.int64(2), "position": 6, "seed": 0}}


def test_rank_state_round_trips_exactly_and_loads_weights_only(tmp_path):
    state = rng_state_now()
    torch.save(to_plain(state), tmp_path / "rank_state_00000.pt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "rank_state_00000.pt") == []
    got = load_rank_state(tmp_path / "rank_state_00000.pt")
    assert got["rng"]["python"] == state["rng"]["python"]
    name, key, *rest = got["rng"]["numpy"]
    assert name == state["rng"]["numpy"][0] and key.dtype == np.uint32
    assert np.array_equal(key, state["rng"]["numpy"][1]) and rest == list(state["rng"]["numpy"][2:])
    assert torch.equal(got["rng"]["torch"], state["rng"]["torch"])
    assert got["data"] == {"epoch": 2, "position": 6, "seed": 0}

    # Restoring it gives the same random numbers as the original state.
    from turbo_ds.loop.rng import set_rng_state

    set_rng_state(state["rng"])
    want = (random.random(), np.random.rand(), torch.rand(1))
    set_rng_state(got["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == want
    assert from_plain(to_plain({"a": (1, [np.float32(2.5)])})) == {"a": (1, [2.5])}


def test_rank_state_written_before_is_read_but_not_a_foreign_pickle(tmp_path):
    state = rng_state_now()
    torch.save(state, tmp_path / "old.pt")  # numpy arrays pickled as such: allowed, nothing else
    assert np.array_equal(load_rank_state(tmp_path / "old.pt")["rng"]["numpy"][1], state["rng"]["numpy"][1])
    marker = tmp_path / "code_ran"
    torch.save({**state, "x": WritesMarker(marker)}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="exec"):
        load_rank_state(tmp_path / "evil.pt")
    assert not marker.exists()
