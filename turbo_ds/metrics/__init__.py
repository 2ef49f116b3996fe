"""Evaluation metrics as pure numpy functions (no torch, no distributed code): retrieval, alignment."""
