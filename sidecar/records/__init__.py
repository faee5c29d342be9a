"""Records of mirrored requests: decoded off the request path, compared, written as Parquet segments."""
