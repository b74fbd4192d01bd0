"""kaggle/: the offline inference entry uses the shipped Kaggle profile, the wheel bundle's pins are the project's,
and the bundle never carries the image's torch."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return out


def test_bundle_pins_are_the_projects_and_leave_torch_out() -> None:
    bundle, project = _pins(ROOT / "kaggle" / "requirements-kaggle.in"), _pins(ROOT / "requirements.txt")
    assert bundle and all(project.get(name) == version for name, version in bundle.items()), \
        {n: (v, project.get(n)) for n, v in bundle.items() if project.get(n) != v}
    assert "torch" not in bundle
    script = (ROOT / "kaggle" / "build_wheels.sh").read_text()
    keep = re.search(r"KEEP_FROM_IMAGE=\$\{KEEP_FROM_IMAGE:-'([^']+)'\}", script).group(1)
    for name in ("torch", "nvidia-cudnn-cu13", "cuda-bindings", "cuda-toolkit", "triton", "numpy", "pandas"):
        assert re.match(keep, name), name
    for name in ("transformers", "gptqmodel", "peft", "safetensors"):
        assert not re.match(keep, name), name


def test_entry_uses_the_shipped_profile_and_scripts_parse() -> None:
    entry = (ROOT / "kaggle" / "predict_kaggle.sh").read_text()
    profiles = set(re.findall(r"--config (configs/\S+\.yaml)", entry))
    assert profiles == {"configs/kaggle_2xt4.yaml"} and (ROOT / "configs" / "kaggle_2xt4.yaml").is_file()
    assert "--no-index" in entry and "--no-deps" in entry  # offline, and the image's torch stays
    for script in ("kaggle/predict_kaggle.sh", "kaggle/build_wheels.sh", "run_final.sh"):
        subprocess.run(["bash", "-n", str(ROOT / script)], check=True)
