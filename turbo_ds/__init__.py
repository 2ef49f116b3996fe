"""turbo_ds: memory-optimized DeepSpeed training of video Transformers with token dropout (Turbo Training)."""

__version__ = "0.1.0"
