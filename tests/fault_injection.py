"""``scripts/train.py`` with one fault injected, for the tests in ``tests/test_preemption.py``:

python tests/fault_injection.py save-hangs TAG MARKER -- TRAIN_ARGS
    the first file written into checkpoint TAG is written half way, MARKER is created, and the
    process hangs there (the test kill -9s it mid-write)
python tests/fault_injection.py data-hangs N -- TRAIN_ARGS
    the N-th dataset item never comes (a DataLoader stuck on a dead filesystem; num_workers 0)
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from turbo_ds.cli import run_cli  # noqa: E402
from turbo_ds.loop.train_cli import main  # noqa: E402


def save_hangs(tag: str, marker: str) -> None:
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(f, (str, Path)) and f"/{tag}/" in str(f):
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            with open(f, "wb") as out:
                out.write(buf.getvalue()[: buf.tell() // 2])
                out.flush()
            Path(marker).write_text(str(f))
            time.sleep(3600)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save


def data_hangs(n: int) -> None:
    from turbo_ds.data.dataset import VideoDataset

    real_getitem = VideoDataset.__getitem__
    calls = {"n": 0}

    def getitem(self, key):
        calls["n"] += 1
        if self.train and calls["n"] >= n:
            time.sleep(3600)
        return real_getitem(self, key)

    VideoDataset.__getitem__ = getitem


if __name__ == "__main__":
    sep = sys.argv.index("--")
    mode, params, train_args = sys.argv[1], sys.argv[2:sep], sys.argv[sep + 1 :]
    {"save-hangs": lambda: save_hangs(*params), "data-hangs": lambda: data_hangs(int(params[0]))}[mode]()
    sys.exit(run_cli(main, train_args))
