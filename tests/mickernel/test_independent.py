"""mickernel stands below both halves: importing any of its modules loads nothing of mic, micd or protocols
(checked in a fresh interpreter, so a lazy or indirect import counts too)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import mickernel

MODULES = sorted(f"mickernel.{m.name}" for m in pkgutil.iter_modules(mickernel.__path__))

CHECK = """
import sys
import {module}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("mic", "micd", "protocols"))
assert not loaded, loaded
"""


def test_every_module_is_checked():
    assert {"mickernel.atomic", "mickernel.binary", "mickernel.errors", "mickernel.locks"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_imports_nothing_of_mic_micd_or_protocols(module):
    command = [sys.executable, "-c", CHECK.format(module=module)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
