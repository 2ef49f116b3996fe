"""Analytic FLOP count and the benchmark's ratio arithmetic (no timing here)."""

import pytest

from turbo_ds.measure import bench_model as bench
from turbo_ds.models import model_config
from turbo_ds.models.flops import block_macs, step_flops


def test_block_macs_by_hand():
    # 10 tokens, width 4, mlp ratio 4: qkv 10*4*12 + proj 10*4*4 + mlp 2*10*4*16 + attention 2*10*10*4
    assert block_macs(10, 4, 4.0) == 480 + 160 + 1280 + 800


def test_dense_step_flops_by_hand():
    cfg = model_config("vit_debug", num_classes=5)  # grid 2x4x4 = 32 tokens + cls, width 32, depth 2
    flops = step_flops(cfg, (3, 3, 4, 32, 32), drop_ratio=0.0)
    embed, block, head = 32 * 384 * 32, block_macs(33, 32, 4.0), 32 * 5
    assert flops.forward == 2 * 3 * (embed + 2 * block + head)
    assert flops.train == 2 * 3 * (2 * embed + 3 * (2 * block + head))
    assert (flops.tokens_kept, flops.tokens_reconstructed) == (32, 0)
    ckpt = step_flops(cfg, (3, 3, 4, 32, 32), drop_ratio=0.0, checkpoint_blocks=2)
    assert ckpt.train - flops.train == 2 * 3 * 2 * block


def test_dropout_and_pmae_counts():
    cfg = model_config("vit_small_patch16", img_size=112)  # 8 x 7 x 7 = 392 tokens
    dense = step_flops(cfg, (1, 3, 16, 112, 112), 0.0)
    turbo = step_flops(cfg, (1, 3, 16, 112, 112), 0.75, pmae_ratio=0.25)
    assert (turbo.tokens_kept, turbo.tokens_reconstructed) == (98, 74)
    assert 3.5 < dense.train / turbo.train < 4.5  # about 1 / keep ratio, less the decoder
    no_mae = step_flops(cfg, (1, 3, 16, 112, 112), 0.75)
    assert no_mae.train < turbo.train < step_flops(cfg, (1, 3, 16, 112, 112), 0.75, pmae_ratio=1.0).train


def test_bench_grid_and_ratios():
    args = bench.parse_args(["--preset", "debug"])
    todo = bench.configs(args)
    assert len(todo) == 20  # 4 drops x 3 pmae x 2 ckpt, less pmae rows at drop 0 (nothing to reconstruct)
    rows = []
    for c in todo:
        if c["drop_ratio"] in (0.0, 0.75) and c["pmae_ratio"] in (0.0, 0.25):
            rows.append({**c, "step_s": 4.0 if c["drop_ratio"] == 0 else 1.0, "peak_mem_mb": 1000.0,
                         "base_mem_mb": 400.0 if c["drop_ratio"] == 0 else 800.0, "cpu_s": 2.0, "saved_mb": None})  # fmt: skip
    bench.add_analysis(rows)
    dense = rows[0]
    assert (dense["speedup"], dense["flop_ratio"], dense["mem_ratio"]) == (1.0, 1.0, 1.0)
    turbo = next(
        r for r in rows if r["drop_ratio"] == 0.75 and r["pmae_ratio"] == 0.25 and r["checkpointing"] == "off"
    )
    assert turbo["speedup"] == 4.0
    assert turbo["flop_efficiency"] == pytest.approx(4.0 / turbo["flop_ratio"])
    assert turbo["act_mem_ratio"] == pytest.approx(200 / 600)
    with pytest.raises(SystemExit):
        bench.parse_args(["--drop-ratios", "0.5"])  # no dense baseline
