"""Debian programs the tests and the chaos tools run for real (chromium, influxd, prometheus,
mosquitto_pub, curl, libfaketime): found on the machine, installed with apt-get when missing and running
as root (as CI does on a clean checkout), else refused with the command that installs them.

`python -m siot.cmd.debian_packages PACKAGE...` installs what is missing in one apt-get call;
`make test` runs it first so no test waits on apt.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence

# Package -> the file that shows it is installed (a program on PATH, or an absolute path).
PROVIDES: dict[str, tuple[str, ...]] = {
    "chromium": ("chromium",),
    "influxdb": ("influxd",),
    "prometheus": ("prometheus",),
    "mosquitto-clients": ("mosquitto_pub",),
    "curl": ("curl",),
    "libfaketime": (
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ),
}


class MissingPackage(FileNotFoundError):
    """A Debian package a test or tool needs is not installed and could not be installed here."""


def install_command(packages: Iterable[str]) -> str:
    return "apt-get install -y " + " ".join(packages)


def installed_path(package: str) -> str | None:
    """Where the package's program (or library) is, or None."""
    for candidate in PROVIDES.get(package, (package,)):
        if os.path.isabs(candidate):
            if os.path.exists(candidate):
                return candidate
        elif found := shutil.which(candidate):
            return found
    return None


def ensure(packages: Sequence[str]) -> None:
    """Install the packages that are missing, in one apt-get call (as root; `apt-get update`
    first only if the install fails, perhaps for want of package lists)."""
    missing = [p for p in packages if installed_path(p) is None]
    if not missing or os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if subprocess.run(command, capture_output=True, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, check=False)
        subprocess.run(command, capture_output=True, env=env, check=False)


def require(package: str) -> str:
    """The path of the package's program, installing the package if it is missing (as root);
    raises MissingPackage with the install command otherwise."""
    if (path := installed_path(package)) is None:
        ensure([package])
        path = installed_path(package)
    if path is None:
        raise MissingPackage(f"{package} is not installed; install it with: {install_command([package])}")
    return path


def main(argv: Sequence[str]) -> int:
    ensure(argv)
    missing = [p for p in argv if installed_path(p) is None]
    if missing:
        print(f"missing Debian packages; install them with: {install_command(missing)}", file=sys.stderr)
    return 0  # the tests that need them fail with the same message; the others still run


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
