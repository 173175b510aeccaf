"""``python -m bench.throughput``: our engine against the naive diffusers loop (``bench/throughput/__main__.py``)."""
