"""The documentation (pages + API reference from docstrings) builds offline, strictly."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_docs_build_strictly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    page = (tmp_path / "api" / "masks" / "index.html").read_text()
    assert "select" in page and "NeuronMask" in page and "coarse_masks" in page
