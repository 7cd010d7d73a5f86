"""Live-migration lab: real QEMU migrations of a guest running geoprobe between two emulated sites.

Run `python -m benchmarks.lab --smoke` (or `benchmarks/lab/run`); see docs/lab.md.
"""
