"""Training losses that gather across ranks (contrastive video-text losses)."""
