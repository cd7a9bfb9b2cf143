"""requirements.lock, which the Dockerfile installs with --require-hashes, agrees with
pyproject.toml: every runtime dependency pinned within its range with hashes, the build
backend too, and no optional extra (the GPL Stripe fake) in it. Pure: reads two files."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s\\]+)")


def locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of every pin in the lock."""
    pins: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        pin = PIN.match(line)
        if pin:
            current = canonicalize_name(pin.group(1))
            pins[current] = (pin.group(2), [])
        elif current and line.strip().startswith("--hash=sha256:"):
            pins[current][1].append(line.strip().removesuffix("\\").strip())
    return pins


def project() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def test_every_runtime_dependency_is_pinned_within_its_range_with_hashes():
    pins = locked()
    assert pins, "requirements.lock has no pins"
    for spec in project()["project"]["dependencies"]:  # type: ignore[index]
        wanted = Requirement(spec)
        name = canonicalize_name(wanted.name)
        assert name in pins, f"{wanted.name} is not in requirements.lock: run `make lock`"
        version, _ = pins[name]
        assert wanted.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {wanted.name}=={version}, outside {wanted.specifier}:"
            " run `make lock`"
        )
    assert all(hashes for _, hashes in pins.values()), "a pin without --hash"


def test_the_build_backend_is_locked_and_no_extra_is():
    pins = locked()
    for spec in project()["build-system"]["requires"]:  # type: ignore[index]
        wanted = Requirement(spec)
        assert canonicalize_name(wanted.name) in pins, f"build requirement {wanted.name}"
    # localstripe is GPL and aiohttp comes only with it: the image must never carry them
    assert "localstripe" not in pins and "aiohttp" not in pins
