"""Supply-chain guards: compromised litellm releases, stray `.pth` start-up hooks, an exact lock.

litellm 1.82.7 and 1.82.8 were published compromised (a credential stealer that runs from a
`.pth` file at every interpreter start); neither may be installed or pinned. A `.pth` file in
site-packages runs code at every Python start, so each one present must be on a reviewed list.
"""

from __future__ import annotations

import re
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
COMPROMISED_LITELLM = {"1.82.7", "1.82.8"}

# Reviewed `.pth` files, matched by name. Add an entry only after reading the file.
ALLOWED_PTH = [
    # setuptools: makes `import distutils` resolve to setuptools' copy (SETUPTOOLS_USE_DISTUTILS);
    # one line that calls `_distutils_hack.add_shim()`.
    re.compile(r"distutils-precedence\.pth"),
    # Our own editable install (`pip install -e .` in scripts/setup): installs the finder that
    # maps `gateway` to this checkout.
    re.compile(r"__editable__\.certainty_gateway-[^/]+\.pth"),
]


def lock_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, version = line.partition("==")
        pins[re.sub(r"[-_.]+", "-", name.strip()).lower()] = version.strip()
    return pins


def test_installed_litellm_is_not_a_compromised_release() -> None:
    try:
        version = metadata.version("litellm")
    except metadata.PackageNotFoundError:
        pytest.skip("litellm is not installed")
    assert version not in COMPROMISED_LITELLM, f"litellm {version} is a compromised release"


def test_lock_does_not_pin_a_compromised_litellm() -> None:
    assert lock_pins().get("litellm") not in COMPROMISED_LITELLM


def test_site_packages_holds_only_reviewed_pth_files() -> None:
    site_packages = Path(sysconfig.get_paths()["purelib"])
    found = sorted(p.name for p in site_packages.glob("*.pth"))
    unknown = [name for name in found if not any(p.fullmatch(name) for p in ALLOWED_PTH)]
    assert not unknown, (
        f"unreviewed .pth files in {site_packages} (they run code at every Python start): {unknown}"
    )


def test_lock_pins_every_line_exactly() -> None:
    loose = [
        line
        for line in LOCK.read_text().splitlines()
        if line.strip()
        and not line.strip().startswith("#")
        and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!_-]+", line.strip())
    ]
    assert not loose, f"requirements.lock lines without an exact `name==version` pin: {loose}"


def test_lock_pins_torch_2_13_0_without_a_local_version() -> None:
    assert lock_pins().get("torch") == "2.13.0"
