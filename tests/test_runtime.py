"""The CPU speed settings are applied in one place, before MindSpore loads, and never override the user."""
import json
import os
import subprocess
import sys

from tests.conftest import ROOT

PROBE = ("import json, os, engine, mindspore; "
         "print(json.dumps({k: os.environ.get(k) for k in ('ONEDNN_MAX_CPU_ISA', 'MS_DEV_HOST_BLOCKING_RUN')}))")


def probe(**env):
    base = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "MS_DEV_HOST_BLOCKING_RUN")}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env={**base, "DA_DEVICE": "CPU", **env},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cpu_defaults_applied_on_import():
    assert probe() == {"ONEDNN_MAX_CPU_ISA": "AVX2", "MS_DEV_HOST_BLOCKING_RUN": "1"}


def test_user_values_are_kept():
    assert probe(ONEDNN_MAX_CPU_ISA="AVX512_CORE", MS_DEV_HOST_BLOCKING_RUN="0") == {
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MS_DEV_HOST_BLOCKING_RUN": "0"}


def test_not_applied_for_accelerators():
    assert probe(DA_DEVICE="Ascend") == {"ONEDNN_MAX_CPU_ISA": None, "MS_DEV_HOST_BLOCKING_RUN": None}
