"""The memory planner: model states against DeepSpeed's estimators, predictions against measured
peaks of real steps, the fit questions and the CLI's errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import tiny_config, write_config

from turbo_ds.engine.memory import PeakMemory, live_tensor_bytes, phase
from turbo_ds.measure.core_step import build_model
from turbo_ds.measure.probe import measure_in_fresh_process, workload_to_json
from turbo_ds.models.config import ViTConfig
from turbo_ds.plan import DecoderShape, StateSetup, Workload, fit_report, parse_memory, plan
from turbo_ds.plan.fit import largest
from turbo_ds.plan.model_states import deepspeed_estimate, states_without_buffers
from turbo_ds.plan.params import ParamCounts, count_on_meta

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20


def tiny_workload(frames=16, drop=0.0, ckpt=False, pmae=False, batch=1, dim=64) -> Workload:
    vit = ViTConfig(
        img_size=32, num_frames=frames, patch_size=8, tubelet_size=2, embed_dim=dim, depth=3, num_heads=2,
        num_classes=5, drop_ratio=drop,
    )  # fmt: skip
    decoder = DecoderShape(dim=32, depth=1, heads=2, pmae_ratio=0.25) if pmae else None
    return Workload(vit, batch, drop, 3 if ckpt else 0, decoder, "fp32", "efficient", "cpu")


def core_plan(w: Workload):
    counts = count_on_meta(lambda: build_model(w, torch.device("meta")))
    return plan(w, counts, StateSetup("torch", precision=w.precision))


def probe(w: Workload) -> int:
    return measure_in_fresh_process(w)["peak_bytes"]


# ---- model states ------------------------------------------------------------------------------
@pytest.mark.parametrize("world", [1, 4, 16])
@pytest.mark.parametrize(
    "stage,offload_opt,offload_param",
    [(2, False, False), (2, True, False), (3, False, False), (3, True, False), (3, True, True)],
)
def test_model_state_bytes_equal_deepspeeds_estimators(world, stage, offload_opt, offload_param):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    counts = ParamCounts(total=86_000_000, trainable=86_000_000, largest_layer=2_359_296, sizes=[86_000_000])
    zero = {"stage3_param_persistence_threshold": 0}
    setup = StateSetup("deepspeed", stage, world, "bf16", offload_opt, offload_param, zero)
    if stage == 2:
        _, expected = estimate_zero2_model_states_mem_needs(counts.total, world, 1, cpu_offload=offload_opt)
    else:
        _, expected, _ = estimate_zero3_model_states_mem_needs(
            counts.total,
            counts.largest_layer,
            world,
            1,
            cpu_offload=offload_opt,
            cpu_offload_params=offload_param,
        )
    assert deepspeed_estimate(counts, setup) == expected
    assert states_without_buffers(counts, setup) == pytest.approx(expected, abs=16)  # integer division only


def test_zero_defaults_are_deepspeeds():
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    from turbo_ds.plan.model_states import ZERO_DEFAULTS

    ds = DeepSpeedZeroConfig()
    assert ZERO_DEFAULTS["reduce_bucket_size"] == ds.reduce_bucket_size
    assert ZERO_DEFAULTS["contiguous_gradients"] == ds.contiguous_gradients
    assert ZERO_DEFAULTS["stage3_param_persistence_threshold"] == ds.param_persistence_threshold
    assert ZERO_DEFAULTS["stage3_max_live_parameters"] == ds.max_live_parameters
    for stage in (1, 2, 3):  # overlap_comm's dynamic default
        assert (
            StateSetup(stage=stage).zero_key("overlap_comm") == DeepSpeedZeroConfig(stage=stage).overlap_comm
        )


def test_gradient_buckets_follow_the_ds_config():
    counts = ParamCounts(total=1000, trainable=1000, sizes=[1000])
    two = StateSetup("deepspeed", 2, 2, "fp32", zero={"reduce_bucket_size": 1000, "overlap_comm": True})
    one = StateSetup("deepspeed", 2, 2, "fp32", zero={"reduce_bucket_size": 1000, "overlap_comm": False})
    assert plan(tiny_workload(), counts, two).items["gradient buckets (DeepSpeed)"] == 2 * 1000 * 4
    assert plan(tiny_workload(), counts, one).items["gradient buckets (DeepSpeed)"] == 1000 * 4


# ---- predictions against measurements -----------------------------------------------------------
def test_peak_memory_counts_tensor_allocations():
    with PeakMemory("cpu") as m:
        a = torch.empty(2**20)  # 4 MiB
        b = torch.empty(2**21)  # 8 MiB
        del a
        c = torch.empty(2**20)
        del b, c
    assert m.peak_bytes == 12 * MiB
    with PeakMemory("cpu") as m:
        a = torch.empty(2**20)
        with phase("inner"):
            b = torch.empty(2**19)  # 2 MiB
            del b
        c = torch.empty(2**21)  # after the phase: not in it
        del a, c
    assert m.phase_peaks == {"inner": 6 * MiB} and m.peak_bytes == 12 * MiB
    before = live_tensor_bytes()
    keep = torch.empty(2**18)
    assert live_tensor_bytes() - before == 1 * MiB
    del keep


@pytest.mark.parametrize(
    "w",
    [
        tiny_workload(frames=16),
        tiny_workload(frames=16, ckpt=True, batch=3),
        tiny_workload(frames=64, drop=0.75, ckpt=True, pmae=True),
        tiny_workload(frames=32, drop=0.9, pmae=True, dim=96),
    ],
    ids=["dense", "dense-ckpt-b3", "turbo-ckpt-pmae", "turbo0.9-pmae-wide"],
)
@pytest.mark.slow
def test_planner_within_15_percent_of_a_measured_model_core_step(w):
    measured = probe(w)
    predicted = core_plan(w).total
    assert abs(predicted / measured - 1) < 0.15, (predicted / MiB, measured / MiB)


@pytest.mark.slow
def test_a_probe_is_a_fresh_process_and_its_errors_come_back():
    w = tiny_workload(drop=0.5, ckpt=True, pmae=True)
    first, again = measure_in_fresh_process(w), measure_in_fresh_process(w)
    assert first["peak_bytes"] == again["peak_bytes"] > 0  # nothing carried over from the last probe
    # The same bytes as a process started from a shell, which imports everything itself.
    cmd = [sys.executable, "-m", "turbo_ds.measure.probe", "--workload", workload_to_json(w)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert json.loads(out.split("PROBE_RESULT ", 1)[1])["peak_bytes"] == first["peak_bytes"]
    with pytest.raises(RuntimeError, match="device"):
        measure_in_fresh_process(w, device="no_such_device")


def measure_and_plan(demo_data, tmp_path, ds_name: str, zero: dict, model: dict):
    """A real trainer config (tiny_config) with ``ds_configs/<ds_name>.json`` (its zero section
    updated with ``zero``), measured over 2 trainer steps and planned: (measurement, plan)."""
    from turbo_ds.config import load_config
    from turbo_ds.engine.ds_config import fill_ds_config, load_ds_config
    from turbo_ds.measure.run import measure_config
    from turbo_ds.plan.from_config import plan_inputs

    ds = load_ds_config(ROOT / "ds_configs" / f"{ds_name}.json")
    ds["zero_optimization"].update(zero)
    ds_path = tmp_path / "ds.json"
    ds_path.write_text(json.dumps(ds))
    cfg_path = write_config(
        tiny_config(demo_data, tmp_path / "run", model=model, data={"num_frames": 8}), tmp_path / "c.yaml"
    )
    measured = measure_config(str(cfg_path), str(ds_path), [], world=1, steps=2)
    cfg = load_config(cfg_path)
    return measured, plan(*plan_inputs(cfg, fill_ds_config(ds, cfg, 1), 1, "cpu"))


@pytest.mark.slow
def test_planner_within_15_percent_of_a_measured_deepspeed_run(demo_data, tmp_path):
    """A real trainer step (ZeRO-2, small buckets so that activations and states matter)."""
    model = {"name": "vit_debug", "overrides": {"embed_dim": 96, "depth": 3, "num_heads": 3}}
    zero = {"reduce_bucket_size": 100_000, "allgather_bucket_size": 100_000}
    measured, p = measure_and_plan(demo_data, tmp_path, "zero2", zero, model)
    assert abs(p.total / measured["peak_bytes"] - 1) < 0.15, (p.total / MiB, measured["peak_bytes"] / MiB)


def test_zero1_fp32_optimizer_step_is_the_measured_one(demo_data, tmp_path):
    """fp32 ZeRO-1 on one rank, a bucket (15 MiB) several times the model (0.7M parameters): at the
    optimizer step DeepSpeed has freed its bucket and holds the gradient partition buffer, one
    group's flattened gradients and AdamW's temporaries of that group; the bucket belongs to backward
    and the gradient reduction after it, which is the run's peak. (The planner had the bucket at the
    step, +61% on the step and +17% on the peak.) The optimizer-step term against the measured peak
    inside the engine's step, and the whole peak."""
    model = {"name": "vit_debug", "overrides": {"embed_dim": 128, "depth": 3, "num_heads": 4}}
    measured, p = measure_and_plan(demo_data, tmp_path, "zero1", {"reduce_bucket_size": 4_000_000}, model)
    step = measured["phase_peak_bytes"]["optimizer step"]
    assert abs(p.phases["optimizer step"] / step - 1) < 0.03, (p.phases, step / MiB)
    assert p.phase == "gradient reduction"
    assert abs(p.total / measured["peak_bytes"] - 1) < 0.03, (p.total / MiB, measured["peak_bytes"] / MiB)


def test_zero1_fp32_step_states_follow_deepspeeds_allocations():
    """The same accounting in bytes, on two optimizer groups: the bucket exists in backward and in
    the reduction after it, not at the step (on one rank or two); the step flattens the largest
    group's partition."""
    from turbo_ds.plan.model_states import model_states
    from turbo_ds.plan.planner import optimizer_temporaries

    sizes = [600, 300, 100]
    counts = ParamCounts(1000, 1000, sizes=sizes, trainable_sizes=sizes, groups=[[600, 300], [100]])
    zero = {"reduce_bucket_size": 10_000}
    one = model_states(counts, StateSetup("deepspeed", 1, 1, "fp32", zero=zero, device="cpu"))
    assert one.items == {"parameters": 4000, "fp32 master weights": 4000, "optimizer states (AdamW)": 8000}
    assert one.backward_items == {"gradient buckets (DeepSpeed)": 40_000}
    assert one.step_items == {
        "gradient partition buffer": 4000,
        "flattened gradient partition (one group)": 3600,
    }
    assert one.reduction_items == {
        "gradient buckets (DeepSpeed)": 40_000, "gradients (not yet reduced)": 0, "gradient partition buffer": 4000,
    }  # fmt: skip
    setup = StateSetup("deepspeed", 1, 1, "fp32", zero=zero, device="cpu")
    assert optimizer_temporaries(counts, setup, "cpu") == 2 * 900 * 4  # one group's partition, fp32
    two = model_states(counts, StateSetup("deepspeed", 1, 2, "fp32", zero=zero, device="cpu"))
    # Rank 1 owns [450, 900) of the first group, overlapping both its parameters (counted whole),
    # and [50, 100) of the second.
    assert counts.in_partition(2) == 900 + 100
    assert two.step_items["gradient partition buffer"] == 4 * 1000
    assert not any("bucket" in k for k in {**two.items, **two.step_items})
    assert two.step_items["flattened gradient partition (one group)"] == 4 * 450


def test_measure_needs_no_weight_files_and_a_missing_input_is_a_one_line_error(demo_data, tmp_path):
    """``--measure`` keeps the model's own initialisation when ``model.pretrained`` is not there yet
    (memory does not depend on the values); a missing index or video root is the trainer's one line."""
    model = {"name": "vit_debug", "pretrained": str(tmp_path / "not_trained_yet.safetensors")}
    cfg = write_config(tiny_config(demo_data, tmp_path / "run", model=model), tmp_path / "c.yaml")
    out = run_plan("--config", str(cfg), "--measure", "--steps", "1")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    notes = [ln for ln in out.stdout.splitlines() if "the model's own initialisation" in ln]
    assert len(notes) == 1 and "model.pretrained (" in notes[0] and "not_trained_yet" in notes[0]
    assert "measured peak" in out.stdout
    for key, missing, message in [
        ("data.index", tmp_path / "none.parquet", "index not found"),
        ("data.root", tmp_path / "no_videos", "video root not found"),
    ]:
        out = run_plan("--config", str(cfg), "--measure", "--steps", "1", "--set", f"{key}={missing}")
        assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
        errors = [ln for ln in out.stderr.splitlines() if ln.startswith("turbo_ds: error: ")]
        assert len(errors) == 1 and message in errors[0] and str(missing) in errors[0], out.stderr
        assert "Traceback" not in out.stderr and "[rank0]" not in out.stderr


# ---- fit questions and the CLI ------------------------------------------------------------------
def test_largest_finds_the_boundary_of_a_monotone_predicate():
    assert largest(lambda v: v <= 37, 1, 1000) == 37
    assert largest(lambda v: v <= 5000, 1, 1000) == 1000
    assert largest(lambda v: False, 1, 1000) == 0


def test_fit_report_on_a_workload_that_fits_and_one_that_does_not():
    w = tiny_workload(frames=16)
    counts = count_on_meta(lambda: build_model(w, torch.device("meta")))
    setup = StateSetup("torch")
    need = plan(w, counts, setup).total
    ok = fit_report(w, counts, setup, need + MiB)
    assert ok.fits and ok.max_micro_batch >= 1 and ok.max_frames >= 16 and not ok.suggestions
    assert plan(w.replace(batch_size=ok.max_micro_batch), counts, setup).total <= need + MiB
    assert plan(w.replace(batch_size=ok.max_micro_batch + 1), counts, setup).total > need + MiB
    long = w.replace(num_frames=256)
    budget = plan(long.replace(checkpoint_blocks=3), counts, setup).total + MiB // 4
    tight = fit_report(long, counts, setup, budget)
    assert not tight.fits and tight.max_frames < 256
    assert tight.suggestions[0].startswith("model.activation_checkpointing=torch")
    assert fit_report(long, counts, setup, need).suggestions[0].startswith("nothing tried fits")


def run_plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "turbo_ds.plan", *args], capture_output=True, text=True, cwd=ROOT
    )


@pytest.mark.slow
def test_cli_answers_fits_and_does_not_fit(tmp_path):
    base = [
        "--config",
        "configs/k400_vitb16_turbo.yaml",
        "--ds_config",
        "ds_configs/zero2.json",
        "--world",
        "8",
    ]
    out = run_plan(*base, "--gpu-mem", "80GiB", "--json", str(tmp_path / "fits.json"))
    assert out.returncode == 0, out.stderr
    fits = json.loads((tmp_path / "fits.json").read_text())
    assert fits["fit"]["fits"] and "FITS in 80.0 GiB" in out.stdout
    assert fits["predicted_mb"] == pytest.approx(sum(fits["items_mb"].values()), rel=1e-3)
    big = ["--set", "data.num_frames=256", "--set", "model.activation_checkpointing=none"]
    out = run_plan(*base, *big, "--gpu-mem", "16GB", "--json", str(tmp_path / "no.json"))
    assert out.returncode == 0, out.stderr
    no = json.loads((tmp_path / "no.json").read_text())
    assert not no["fit"]["fits"] and "DOES NOT FIT" in out.stdout
    assert no["fit"]["max_frames"] < 256 and no["fit"]["suggestions"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--gpu-mem", "80 gigs"], "unknown GPU memory size"),
        (["--set", "optim.global_batch_size=7"], "optim.global_batch_size = 7"),
        (["--set", "optim.micro_batch_size=0"], "optim.micro_batch_size"),
        (["--world", "0"], "--world must be >= 1"),
    ],
)
def test_cli_bad_inputs_are_one_line_errors(args, message):
    out = run_plan("--config", "configs/demo_classification.yaml", *args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_parse_memory_forms():
    assert parse_memory("80GiB") == 80 * 2**30
    assert parse_memory("40GB") == 40 * 10**9
    assert parse_memory("24576MiB") == 24 * 2**30
    assert parse_memory("24") == 24 * 2**30
    assert parse_memory("A100-80GB") == 80 * 2**30
    with pytest.raises(ValueError, match="unknown GPU memory size"):
        parse_memory("-3GB")


# ---- the planner is prediction: torch only, no measurement, loop or deepspeed -------------------
def test_the_planner_imports_no_measurement_loop_or_deepspeed():
    """Every module of ``turbo_ds.plan`` (its command line too, whose ``--measure`` imports measurement
    lazily) imported in a fresh interpreter, and a config planned: nothing of ``turbo_ds.measure``, the
    training loop or deepspeed comes with it."""
    code = textwrap.dedent(
        """
        import importlib, json, pkgutil, sys

        import turbo_ds.plan
        from turbo_ds.config import config_from_dict
        from turbo_ds.engine.ds_config import fill_ds_config, load_ds_config

        for m in pkgutil.iter_modules(turbo_ds.plan.__path__):
            importlib.import_module(f"turbo_ds.plan.{m.name}")
        from turbo_ds.plan.from_config import plan_inputs

        cfg = config_from_dict({"token_dropout": {"drop_ratio": 0.75}, "pmae": {"enabled": True}})
        ds = fill_ds_config(load_ds_config("ds_configs/zero2.json"), cfg, 2)
        assert turbo_ds.plan.plan(*plan_inputs(cfg, ds, 2, "cpu")).total > 0
        banned = ("turbo_ds.measure", "turbo_ds.loop", "turbo_ds.trainer", "deepspeed")
        print(json.dumps(sorted(m for m in sys.modules if m.startswith(banned))))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
