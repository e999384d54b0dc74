"""Shared machinery: runtime set-up, registry, config, checkpoints, training loop.

Importing this package applies the CPU speed settings (see ``engine.runtime``) before any
MindSpore op runs; every other package of the repo imports it first for that reason.
"""
from engine.runtime import configure_cpu_env

configure_cpu_env()
