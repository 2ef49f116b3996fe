"""`python -m data_index`: build, validate, inspect and transcode Parquet video indexes; the demo set."""
