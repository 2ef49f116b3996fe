#!/usr/bin/env python
"""Consolidate a ZeRO checkpoint into fp32 weights that ``VideoViT`` loads, or convert it to a
DeepSpeed universal checkpoint (to resume at another world size).

    python scripts/export.py --checkpoint runs/demo/checkpoints --out runs/demo/vit.safetensors
    python scripts/export.py --checkpoint runs/demo/checkpoints --universal
    # then: ... scripts/train.py ... --resume latest --set checkpoint.load_universal=true

The export is ``vit.safetensors`` (tensors only) plus ``vit.json`` (model and train config); an ``--out``
ending in ``.pt`` writes those two beside it. Load it with ``turbo_ds.engine.export.load_exported(path)``
(a ``VideoViT`` in eval mode), ``scripts/eval.py --weights`` or ``model.pretrained``.
"""

import argparse
from pathlib import Path

from turbo_ds.engine.export import export_encoder, export_paths, resolve_tag, to_universal


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (with 'latest') or a tag folder")
    p.add_argument("--tag", default=None, help="tag to export (default: latest)")
    p.add_argument(
        "--out",
        default=None,
        help="output .safetensors (a .json config goes beside it; default: <checkpoint>/<tag>_vit_fp32)",
    )
    p.add_argument("--universal", action="store_true", help="write a universal checkpoint instead")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow checkpoint files that pickle objects beyond tensors (unpickling can run code)",
    )
    args = p.parse_args(argv)
    if args.universal:
        out = to_universal(args.checkpoint, args.tag, trust_pickle=args.trust_pickle)
        print(
            f"universal checkpoint: {out} (resume with --resume {Path(out).parent} --set checkpoint.load_universal=true)"
        )
        return out
    root, tag = resolve_tag(args.checkpoint, args.tag)
    requested = Path(args.out) if args.out else root / f"{tag}_vit_fp32.safetensors"
    out = export_encoder(root, requested, tag, trust_pickle=args.trust_pickle)
    if requested.suffix not in ("", ".safetensors", ".json"):
        print(f"note: exports are safetensors now (no pickle): wrote {out.name} instead of {requested.name}")
    print(f"fp32 VideoViT weights: {out} (config: {export_paths(out)[1]})")
    return out


if __name__ == "__main__":
    main()
