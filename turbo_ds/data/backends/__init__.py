"""Decoder backends: each takes (path, frame indices, size) and returns exactly those frames as
(T, H, W, 3) uint8, or raises :class:`DecodeError`. ``turbo_ds.data.decode`` picks one and falls back."""
