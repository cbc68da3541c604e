"""Run a command in a private network namespace with only its loopback up (tests and benchmarks with Orthanc).

Orthanc 1.10 listens on every interface and cannot be told to bind to loopback only, so tests start it, and
everything that talks to it, in a network namespace of their own: nothing outside can reach it, and its fixed ports
collide with nothing. ``python -m nnunet_liver.testing.netns CMD ...`` is the namespace's first process: it brings
``lo`` up (the ``SIOCSIFFLAGS`` ioctl that ``ip link set lo up`` makes, without needing iproute2) and executes
``CMD``. :func:`netns_argv` wraps it in ``unshare -n`` (``unshare -rn``, a user namespace mapping the caller to
root, when not root). :func:`netns_problem` says why a namespace cannot be made here, or ``None``.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys
from typing import List, Optional, Sequence

__all__ = ["ENV_INSIDE", "inside_netns", "netns_argv", "netns_problem", "loopback_up"]

#: set (to "1") in the environment of a command started by :func:`netns_argv`
ENV_INSIDE = "NNUNET_LIVER_NETNS"
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def inside_netns() -> bool:
    return os.environ.get(ENV_INSIDE) == "1"


def loopback_up() -> None:
    """Set the ``lo`` interface up (needs CAP_NET_ADMIN in the namespace, which its creator has)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP))


def _unshare_flags() -> List[str]:
    return ["-n"] if os.geteuid() == 0 else ["-r", "-n"]


def netns_argv(argv: Sequence[str]) -> List[str]:
    """``argv`` run in a new network namespace with loopback up (and :data:`ENV_INSIDE` set)."""
    return ["unshare", *_unshare_flags(), sys.executable, "-m", "nnunet_liver.testing.netns", *argv]


def netns_problem() -> Optional[str]:
    """``None`` when a private network namespace can be made here (or this process is in one), else why not."""
    if inside_netns():
        return None
    if shutil.which("unshare") is None:
        return "no 'unshare' command (util-linux) to make a private network namespace"
    probe = subprocess.run(netns_argv([sys.executable, "-c", "pass"]), capture_output=True, text=True)
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or [f"exit code {probe.returncode}"])[-1]
        return f"cannot make a private network namespace (unshare {' '.join(_unshare_flags())}: {why})"
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: python -m nnunet_liver.testing.netns CMD [ARG ...] (run by unshare -n)", file=sys.stderr)
        return 2
    loopback_up()
    os.environ[ENV_INSIDE] = "1"
    os.execvp(argv[0], argv)
    return 1  # pragma: no cover - execvp does not return


if __name__ == "__main__":
    sys.exit(main())
