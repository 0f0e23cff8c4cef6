"""Importing the verifiers and data loaders is cheap: math-verify, sympy and pyarrow load only when used."""

import subprocess
import sys


def test_import_loads_no_heavy_library():
    code = (
        "import sys, opdkit.rewards, opdkit.data\n"
        "heavy = [m for m in ('math_verify', 'sympy', 'pyarrow', 'torch') if m in sys.modules]\n"
        "print(','.join(heavy) + '|' + ','.join(opdkit.rewards.VERIFIERS.names()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    heavy, names = out.split("|")
    assert heavy == ""
    assert {"math", "mcq", "toolcall", "addition/boxed", "countdown/mcq", "sorting/tool"} <= set(
        names.split(",")
    )
