"""Video: generated moving-digit clips and small talking faces, their models and metrics."""
