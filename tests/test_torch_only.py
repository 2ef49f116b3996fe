"""The model core runs with torch alone, as on a lent GPU machine that has only its own PyTorch.

Each test runs a subprocess whose `sitecustomize` (first on PYTHONPATH, so subprocesses of it inherit
it too) makes every import of the heavy or optional dependencies fail. Also scripts/gpu_check.sh on a
machine without a GPU: it records the environment, skips the GPU steps and exits 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from turbo_ds.measure import bench_model

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = (
    "deepspeed", "mlflow", "decord", "av", "open_clip", "pyarrow", "fairscale", "tqdm", "yaml", "numpy",
    "timm", "torchvision", "PIL", "matplotlib", "psutil",
)  # fmt: skip

# Every finder on sys.meta_path is wrapped so that it finds none of BLOCKED: for the import system and
# for importlib.util.find_spec (which torch uses to probe for optional packages), they are not installed.
SITECUSTOMIZE = f"""
import sys
import warnings

BLOCKED = {set(BLOCKED)!r}
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")


class _Hide:
    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return None
        find = getattr(self._finder, "find_spec", None)
        return find(name, path, target) if find is not None else None

    def __getattr__(self, attr):
        return getattr(self._finder, attr)


sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
"""


@pytest.fixture
def torch_only_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
        "OMP_WAIT_POLICY": "PASSIVE",
        "OMP_NUM_THREADS": "1",
    }


def run(args: list[str], env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_model_core_trains_with_torch_only(torch_only_env):
    code = textwrap.dedent(
        """
        import math, sys

        import torch
        for name in ("yaml", "deepspeed", "numpy", "open_clip"):
            try:
                __import__(name)
            except ImportError:
                pass
            else:
                raise AssertionError(f"{name} should be blocked")

        import turbo_ds
        from turbo_ds.config import ConfigError, TrainConfig, config_from_dict, load_config
        from turbo_ds.measure.core_step import build_core, core_workload, train_step
        from turbo_ds.models import model_config, token_dropout_indices
        from turbo_ds.models.flops import step_flops

        # Config dataclasses and validation need no YAML; reading YAML says what is missing.
        cfg = config_from_dict({"token_dropout": {"drop_ratio": 0.75}})
        assert isinstance(cfg, TrainConfig)
        try:
            config_from_dict({"optim": {"nope": 1}})
        except ConfigError:
            pass
        else:
            raise AssertionError("unknown key accepted")
        try:
            load_config("configs/demo_classification.yaml")
        except ImportError as e:
            assert "gpu-bundle" in str(e), e
        else:
            raise AssertionError("load_config worked without yaml")

        torch.manual_seed(0)
        keep, drop = token_dropout_indices(2, (2, 4, 4), 0.75)
        assert keep.shape == (2, 8) and drop.shape == (2, 24)
        vit = model_config("vit_debug", num_classes=4, drop_ratio=0.75)
        workload = core_workload(vit, 2, pmae_ratio=0.5, checkpointing=True)
        model, opt = build_core(workload, lr=1e-3)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        video, labels = torch.randn(2, 3, 4, 32, 32), torch.tensor([0, 3])
        losses = train_step(model, opt, video, labels, autocast=torch.bfloat16)
        assert math.isfinite(losses.loss.item()) and losses.mae_loss is not None
        # AdamW moves exactly the parameters that got a gradient: every one must have moved.
        still = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
        assert not still, still
        assert step_flops(vit, tuple(video.shape), 0.75, 0.5).train > 0
        model.eval()
        with torch.no_grad():
            assert model(video).logits.shape == (2, 4)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in {"yaml", "deepspeed", "numpy", "open_clip"})
        assert not leaked, leaked
        print("OK")
        """
    )
    assert run(["-c", code], torch_only_env).stdout.strip().endswith("OK")


@pytest.mark.slow
def test_bench_model_runs_with_torch_only(torch_only_env, tmp_path):
    out = tmp_path / "bench.json"
    run(
        [
            "scripts/bench_model.py", "--preset", "debug", "--drop-ratios", "0", "0.75",
            "--pmae-ratios", "0", "--ckpt", "off", "--precision", "bf16", "--threads", "1",
            "--json", str(out),
        ],
        torch_only_env,
    )  # fmt: skip
    rows = json.loads(out.read_text())
    assert [(r["drop_ratio"], r["pmae_ratio"]) for r in rows] == [(0.0, 0.0), (0.75, 0.0)]
    assert all(r["precision"] == "bf16" and r["step_s"] > 0 and r["gflops"] > 0 for r in rows)
    assert rows[0]["speedup"] == 1.0


def test_bench_model_gpu_preset_is_vitb16_bf16():
    args = bench_model.parse_args(["--preset", "gpu"])
    assert (args.models, args.frames, args.img_size, args.precision, args.device) == (
        ["vit_base_patch16"], 16, 224, "bf16", "cuda",
    )  # fmt: skip
    grid = bench_model.configs(args)
    assert len(grid) == 14 and grid[0]["drop_ratio"] == 0.0 and grid[0]["checkpointing"] == "off"
    # The cpu preset keeps its full fp32 grid.
    cpu = bench_model.parse_args(["--preset", "cpu"])
    assert cpu.precision == "fp32" and len(bench_model.configs(cpu)) == 20


@pytest.mark.slow
def test_gpu_train_check_tiny_with_torch_only(torch_only_env, tmp_path):
    out = tmp_path / "train_check.json"
    proc = run(["scripts/gpu_train_check.py", "--tiny", "--json", str(out)], torch_only_env)
    res = json.loads(out.read_text())
    assert res["passed"], res["failures"]
    assert len(res["steps"]) == 30 and res["loss_last_quarter"] < res["loss_first_quarter"]
    assert all(s["mae_loss"] is not None for s in res["steps"])
    assert res["config"]["precision"] == "bf16" and res["kept_tokens_per_s"] > 0
    assert "PASSED" in proc.stdout


@pytest.mark.slow
def test_gpu_check_sh_without_gpu(tmp_path):
    """No GPU: environment facts, the GPU steps skipped, exit 0; a failing step is recorded, exit 1."""
    env = {**os.environ, "OUT": str(tmp_path / "ok"), "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    if 'cuda_available": true' in proc.stdout:
        pytest.skip("a GPU is visible: scripts/gpu_check.sh would run the GPU steps")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "ok" / "summary.json").read_text())
    assert [(s["step"], s["status"]) for s in summary["steps"]] == [
        ("env", "ok"), ("bench_model", "skipped"), ("bench_frames", "skipped"), ("plan", "skipped"),
        ("train", "skipped"), ("decode", "skipped"),
    ]  # fmt: skip
    env_facts = json.loads((tmp_path / "ok" / "env.json").read_text())
    assert env_facts["cuda_available"] is False and env_facts["torch"]
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == [
        "env.json",
        "gpu_check.log",
        "summary.json",
    ]

    env = {**os.environ, "OUT": str(tmp_path / "bad"), "PYTHON": "false"}
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    summary = json.loads((tmp_path / "bad" / "summary.json").read_text())
    assert summary["failed"] == 1 and summary["steps"][0]["status"] == "failed"
    assert [s["status"] for s in summary["steps"][1:]] == ["skipped"] * 5


def test_config_needs_only_the_standard_library():
    """`python -S` (no site-packages): the config dataclasses and checks import and work."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from turbo_ds.config import config_from_dict; "
        "print(config_from_dict({'optim': {'lr': 3e-4}}).optim.lr)"
    )
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code, str(ROOT)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0.0003"


@pytest.mark.slow
def test_bench_frames_and_the_planner_run_with_torch_only(torch_only_env, tmp_path):
    """What scripts/gpu_check.sh runs on the GPU machine: bench_frames (its probes in subprocesses)
    and the planner on a config given as a dict (YAML is hidden here too)."""
    out = tmp_path / "frames.json"
    run(
        [
            "scripts/bench_frames.py",
            "--preset",
            "smoke",
            "--settings",
            "dense",
            "turbo 0.9 + ckpt",
            "--json",
            str(out),
        ],
        torch_only_env,
        timeout=300,
    )
    rows = {r["setting"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["turbo 0.9 + ckpt"]["max_frames"] > rows["dense"]["max_frames"] > 0
    for r in rows.values():
        assert r["measured_mb"] <= r["budget_mb"] and abs(r["error_pct"]) < 15
    code = textwrap.dedent(
        """
        import json
        from turbo_ds.config import config_from_dict
        from turbo_ds.engine.ds_config import fill_ds_config, load_ds_config
        from turbo_ds.plan import plan
        from turbo_ds.plan.from_config import plan_inputs

        cfg = config_from_dict({
            "model": {"name": "vit_base_patch16", "activation_checkpointing": "torch"},
            "token_dropout": {"drop_ratio": 0.75}, "pmae": {"enabled": True},
            "data": {"num_frames": 16, "img_size": 224}, "task": {"num_classes": 400},
            "optim": {"micro_batch_size": 8}, "train": {"max_steps": 10},
        })
        ds = fill_ds_config(load_ds_config("ds_configs/zero2.json"), cfg, 8, bf16_supported=True)
        p = plan(*plan_inputs(cfg, ds, 8, "cuda"))
        print(json.dumps({"mb": p.total_mb, "params": p.counts.total, "precision": p.workload.precision}))
        """
    )
    res = json.loads(run(["-c", code], torch_only_env).stdout.strip().splitlines()[-1])
    assert res["precision"] == "bf16" and 85e6 < res["params"] < 100e6 and res["mb"] > 0
