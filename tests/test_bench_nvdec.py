"""scripts/bench_nvdec.py (turbo_ds/measure/nvdec.py) on the CPU: `prepare` writes the videos, every sample's indices and reference
thumbnails that identify each frame; `run` where PyNvVideoCodec or a GPU is missing is one line, exit 2."""

import importlib.util
import json
import subprocess

import av
import numpy as np
import pytest
from helpers import PY, ROOT

from turbo_ds.measure.nvdec import nearest_frames, thumbnails


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nvdec")
    subprocess.run(
        [PY, "scripts/bench_nvdec.py", "prepare", str(folder), "--seconds", "4"], cwd=ROOT, check=True
    )
    return folder


def test_prepare_writes_videos_samples_and_thumbnails(prepared):
    meta = json.loads((prepared / "samples.json").read_text())
    assert sorted(meta["videos"]) == ["web480p_g16.mp4", "web480p_g250.mp4"] and meta["frames"] == 100
    assert {k: len(v) for k, v in meta["samples"].items()} == {
        "caption 16f": 8,
        "uniform 64f": 4,
        "uniform 256f": 2,
    }
    for clip in meta["samples"]["caption 16f"]:
        assert len(clip) == 16 and np.all(np.diff(clip) == 4) and clip[0] >= 0 and clip[-1] < 100
    for name, info in meta["videos"].items():
        thumbs = np.load(prepared / name.replace(".mp4", ".thumbs.npy")).astype(np.float32)
        assert thumbs.shape == (100, 18, 32) and info["frames"] == 100
        assert np.allclose(thumbs.reshape(100, -1).mean(axis=1), 0, atol=1e-2)  # standardised
        with av.open(str(prepared / name)) as c:  # the gop asked for: keyframes where they should be
            keys = [i for i, p in enumerate(c.demux(video=0)) if p.is_keyframe and p.size]
        assert keys[:2] == [0, info["gop"]] or (info["gop"] >= 100 and keys == [0])


def test_thumbnails_identify_frames_through_another_colour_conversion(prepared):
    """What run checks NVDEC's frames with: each frame converted by a different YUV->RGB matrix and
    range (BT.709 full range, not swscale's BT.601 limited) is still nearest to its own reference."""
    reference = np.load(prepared / "web480p_g16.thumbs.npy").astype(np.float32)
    frames = []
    with av.open(str(prepared / "web480p_g16.mp4")) as c:
        for f in c.decode(video=0):
            h, w = f.height, f.width
            yuv = f.to_ndarray(format="yuv420p").astype(np.float32)
            y = yuv[:h]
            u = yuv[h : h + h // 4].reshape(h // 2, w // 2).repeat(2, 0).repeat(2, 1) - 128
            v = yuv[h + h // 4 :].reshape(h // 2, w // 2).repeat(2, 0).repeat(2, 1) - 128
            rgb = np.stack([y + 1.5748 * v, y - 0.1873 * u - 0.4681 * v, y + 1.8556 * u], axis=-1)
            frames.append(np.clip(rgb, 0, 255).astype(np.uint8))
    found, _ = nearest_frames(thumbnails(np.stack(frames)), reference)
    assert found.tolist() == list(range(len(frames)))
    shifted, _ = nearest_frames(thumbnails(np.stack(frames[1:])), reference)
    assert shifted.tolist() == list(range(1, len(frames)))  # an off-by-one decoder would show


@pytest.mark.skipif(importlib.util.find_spec("PyNvVideoCodec") is not None, reason="PyNvVideoCodec is here")
def test_run_without_pynvvideocodec_is_one_line(prepared):
    r = subprocess.run(
        [PY, "scripts/bench_nvdec.py", "run", str(prepared)], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert r.stderr.startswith("bench_nvdec: PyNvVideoCodec cannot load here")
