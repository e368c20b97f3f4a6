"""Measurement scripts: training throughput and MFU, sampling wall time, bits/dim throughput (README.md)."""
