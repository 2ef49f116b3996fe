#!/usr/bin/env python
"""Consolidate a ZeRO checkpoint into fp32 weights that ``VideoViT`` loads, or convert it to a
DeepSpeed universal checkpoint (to resume at another world size).

    python scripts/export.py --checkpoint runs/demo/checkpoints --out runs/demo/vit.pt
    python scripts/export.py --checkpoint runs/demo/checkpoints --universal
    # then: ... scripts/train.py ... --resume latest --set checkpoint.load_universal=true

Load the export with ``turbo_ds.engine.export.load_exported(path)`` (a ``VideoViT`` in eval mode).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from turbo_ds.engine.export import export_encoder, to_universal  # noqa: E402


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (with 'latest') or a tag folder")
    p.add_argument("--tag", default=None, help="tag to export (default: latest)")
    p.add_argument(
        "--out", default=None, help="output .pt for fp32 weights (default: <checkpoint>/<tag>_vit_fp32.pt)"
    )
    p.add_argument("--universal", action="store_true", help="write a universal checkpoint instead")
    args = p.parse_args(argv)
    if args.universal:
        out = to_universal(args.checkpoint, args.tag)
        print(
            f"universal checkpoint: {out} (resume with --resume {Path(out).parent} --set checkpoint.load_universal=true)"
        )
        return out
    from turbo_ds.engine.export import resolve_tag

    root, tag = resolve_tag(args.checkpoint, args.tag)
    out = export_encoder(root, args.out or root / f"{tag}_vit_fp32.pt", tag)
    print(f"fp32 VideoViT weights: {out}")
    return out


if __name__ == "__main__":
    main()
