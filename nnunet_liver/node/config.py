"""The node's settings: one JSON file (``nnunet-liver-node run -c node.json``).

A minimal file (every other key has a default; ``nnunet-liver-node example-config`` prints them all)::

    {
      "ae_title": "NNLIVER", "port": 11112,
      "allowed_peers": [{"ae_title": "ORTHANC", "host": "10.0.0.5"}],
      "destination": {"ae_title": "ORTHANC", "host": "10.0.0.5", "port": 4242},
      "model": "/models/Dataset501_Liver4Phase/LiverIFMTrainer__nnUNetPlans__3d_fullres",
      "patch_model": "/models/Dataset502_LiverPatch/LesionShufflePatchTrainer__nnUNetPlans__3d_fullres",
      "device": "cuda",
      "spool": "/var/lib/nnunet-liver-node"
    }

- ``allowed_peers``: who may send studies (C-STORE) or ping (C-ECHO). Each entry names a calling AE title (``"*"``:
  any) and optionally a ``host``: an IP address, a network in CIDR notation (``"10.0.0.0/24"``) or a host name
  (resolved when the node starts). A peer must match one entry in both; anyone else is rejected at association time
  (A-ASSOCIATE-RJ, permanent, "calling AE title not recognised"). At least one entry is required.
- ``destination``: where SEG + SR go: a DICOM node (``ae_title``, ``host``, ``port``; C-STORE) or a DICOMweb
  server (``{"dicomweb": URL, "auth_file": FILE}``; STOW-RS). Credentials never live in this file: see
  :mod:`nnunet_liver.dicom.web`.
- ``stable_age`` (s, default 60, as Orthanc's StableAge): a study counts as complete once no new instance of it has
  arrived for that long; the DICOM protocol has no end-of-study message.
- ``workers``: studies detected at the same time, one detector (model) each, on ``device`` (``auto``: ``cuda`` when
  torch sees a GPU, else ``cpu``; a list: one device per worker, e.g. ``["cuda:0", "cuda:1"]``).
- ``spool``: the node's folder (instances, results, queue); relative to the settings file's folder.
- ``min_free_mb``: below this much free space in the spool's file system, new associations are rejected
  (transient, "local limit exceeded") and C-STOREs answered 0xA700 (out of resources).
- ``retry_initial_s``, ``retry_max_s``: sending SEG + SR is retried with a back-off doubling from the first to the
  second, forever: a destination that is down loses nothing.
- ``retention_hours``: a study's instances and results are deleted this long after its results were sent (or it
  failed); its row in the queue stays. 0 keeps everything.
"""
from __future__ import annotations

import ipaddress
import json
import os
import socket
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Sequence, Union

from nnunet_liver.utils.io import InputError

__all__ = ["Peer", "Destination", "NodeConfig", "load_config", "example_config", "CONFIG_VERSION"]

CONFIG_VERSION = 1
_AE_MAX = 16


def _ae_title(value, what: str) -> str:
    title = str(value).strip()
    if not title or len(title) > _AE_MAX or "\\" in title or not title.isprintable():
        raise InputError(f"{what}: {value!r} is not an AE title (1-16 printable characters, no backslash)")
    return title


@dataclass(frozen=True)
class Peer:
    """A peer allowed to connect: its calling AE title (``"*"``: any) and, optionally, where it may connect from.

    ``networks`` are the IP networks ``host`` stands for (one address is a /32 or /128 network; a host name is
    resolved to its addresses once, when the configuration is loaded).
    """
    ae_title: str
    host: Optional[str] = None
    networks: tuple = ()

    def allows(self, ae_title: str, address: str) -> bool:
        if self.ae_title != "*" and self.ae_title != ae_title.strip():
            return False
        if self.host is None:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)

    @classmethod
    def parse(cls, entry, where: str) -> "Peer":
        if not isinstance(entry, dict) or "ae_title" not in entry:
            raise InputError(f"{where}: each allowed peer is {{\"ae_title\": ..., \"host\": ...}}, got {entry!r}")
        unknown = set(entry) - {"ae_title", "host"}
        if unknown:
            raise InputError(f"{where}: unknown key(s) {sorted(unknown)} in allowed peer {entry!r}")
        title = "*" if str(entry["ae_title"]).strip() == "*" else _ae_title(entry["ae_title"], where)
        host = entry.get("host")
        if host is None:
            return cls(title)
        return cls(title, str(host), tuple(_networks(str(host), where)))


def _networks(host: str, where: str) -> List[ipaddress._BaseNetwork]:
    try:
        return [ipaddress.ip_network(host, strict=False)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as e:
        raise InputError(f"{where}: allowed peer host {host!r} is neither an IP address, a network nor a host name "
                         f"that resolves ({e.strerror or e})") from None
    return sorted({ipaddress.ip_network(info[4][0], strict=False) for info in infos}, key=str)


@dataclass(frozen=True)
class Destination:
    """Where results go: a DICOM AE (C-STORE) or a DICOMweb server (STOW-RS)."""
    ae_title: Optional[str] = None
    host: Optional[str] = None
    port: Optional[int] = None
    dicomweb: Optional[str] = None
    auth_file: Optional[str] = None

    @property
    def kind(self) -> str:
        return "dicomweb" if self.dicomweb else "dicom"

    def describe(self) -> str:
        return self.dicomweb if self.dicomweb else f"{self.ae_title}@{self.host}:{self.port}"

    @classmethod
    def parse(cls, entry, where: str) -> "Destination":
        if not isinstance(entry, dict):
            raise InputError(f"{where}: destination must be an object, got {entry!r}")
        unknown = set(entry) - {"ae_title", "host", "port", "dicomweb", "auth_file"}
        if unknown:
            raise InputError(f"{where}: unknown key(s) {sorted(unknown)} in destination")
        if entry.get("dicomweb"):
            url = str(entry["dicomweb"])
            if not url.startswith(("http://", "https://")):
                raise InputError(f"{where}: destination dicomweb {url!r} must be an http:// or https:// URL")
            return cls(dicomweb=url.rstrip("/"), auth_file=entry.get("auth_file"))
        missing = [k for k in ("ae_title", "host", "port") if entry.get(k) in (None, "")]
        if missing:
            raise InputError(f"{where}: destination needs ae_title, host and port (or dicomweb); missing "
                             f"{', '.join(missing)}")
        return cls(ae_title=_ae_title(entry["ae_title"], where), host=str(entry["host"]),
                   port=_port(entry["port"], f"{where}: destination port"))


def _port(value, what: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = -1
    if not 0 <= port <= 65535 or isinstance(value, bool):
        raise InputError(f"{what}: {value!r} is not a TCP port (0-65535)")
    return port


@dataclass
class NodeConfig:
    """Every setting of the node (see the module docstring); :func:`load_config` reads and checks them."""
    allowed_peers: List[Peer]
    destination: Destination
    spool: str
    model: str = "demo"
    patch_model: Optional[str] = None  # None with model "demo": the bundled UNet-patch; "none": no reclassification
    folds: Optional[List[str]] = None
    checkpoint: str = "checkpoint_final.pth"
    device: Union[str, List[str]] = "auto"  # auto: cuda when torch sees a GPU, else cpu
    factors: List[float] = field(default_factory=lambda: [1.0, 4.0])
    disable_tta: bool = False
    ae_title: str = "NNLIVER"
    bind: str = "0.0.0.0"
    port: int = 11112
    stable_age: float = 60.0
    workers: int = 1
    min_free_mb: float = 2048.0
    retry_initial_s: float = 10.0
    retry_max_s: float = 600.0
    retention_hours: float = 168.0
    max_pdu: int = 0  # 0: unlimited
    network_timeout_s: float = 60.0
    log_level: str = "INFO"
    path: Optional[str] = None  # the file it was read from

    def device_of(self, worker: int) -> str:
        devices = self.device if isinstance(self.device, list) else [self.device]
        return devices[worker % len(devices)]

    def patch_model_dir(self) -> Optional[str]:
        """UNet-patch's folder as :class:`~nnunet_liver.inference.LiverDetector` takes it (as ``nnunet-liver-detect
        --patch-model``: the bundled pair with ``model: demo``, ``"none"`` for no reclassification)."""
        if self.patch_model is None:
            return "demo" if self.model == "demo" else None
        return None if str(self.patch_model).lower() == "none" else self.patch_model

    def to_dict(self) -> dict:
        d = asdict(self)
        d["allowed_peers"] = [{k: v for k, v in (("ae_title", p.ae_title), ("host", p.host)) if v is not None}
                              for p in self.allowed_peers]
        d["destination"] = {k: v for k, v in asdict(self.destination).items() if v is not None}
        d.pop("path")
        return {"schema_version": CONFIG_VERSION, **d}


_SIMPLE = {"model": str, "patch_model": str, "checkpoint": str, "ae_title": str, "bind": str, "log_level": str,
           "disable_tta": bool}
_NUMBERS = {"stable_age": 0.0, "min_free_mb": 0.0, "retry_initial_s": 0.01, "retry_max_s": 0.01,
            "retention_hours": 0.0, "network_timeout_s": 1.0}


def load_config(path: str) -> NodeConfig:
    """Read and check the node's JSON settings; :class:`InputError` naming the file and the key on a problem."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise InputError(f"{path}: configuration file not found") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read the configuration ({e})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: the configuration must be a JSON object")
    version = raw.pop("schema_version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise InputError(f"{path}: schema_version {version!r} is not supported (this node reads {CONFIG_VERSION})")
    known = set(NodeConfig.__dataclass_fields__) - {"path"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InputError(f"{path}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    for key in ("allowed_peers", "destination", "spool"):
        if key not in raw:
            raise InputError(f"{path}: '{key}' is required")
    peers = raw.pop("allowed_peers")
    if not isinstance(peers, list) or not peers:
        raise InputError(f"{path}: allowed_peers must list at least one peer ({{\"ae_title\": ..., \"host\": ...}})")
    kwargs = {"allowed_peers": [Peer.parse(p, path) for p in peers],
              "destination": Destination.parse(raw.pop("destination"), path),
              "spool": os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(path)), str(raw.pop("spool")))),
              "path": os.path.abspath(path)}
    for key, value in raw.items():
        kwargs[key] = _checked(key, value, path)
    cfg = NodeConfig(**kwargs)
    if cfg.retry_max_s < cfg.retry_initial_s:
        raise InputError(f"{path}: retry_max_s ({cfg.retry_max_s:g}) must be >= retry_initial_s "
                         f"({cfg.retry_initial_s:g})")
    return cfg


def _checked(key: str, value, path: str):
    what = f"{path}: {key}"
    if value is None and key in ("patch_model", "folds"):  # optional: null is the default
        return None
    if key in _SIMPLE:
        if _SIMPLE[key] is bool and not isinstance(value, bool):
            raise InputError(f"{what}: {value!r} must be true or false")
        if key == "ae_title":
            return _ae_title(value, what)
        if key == "log_level" and str(value).upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise InputError(f"{what}: {value!r} must be DEBUG, INFO, WARNING or ERROR")
        return str(value).upper() if key == "log_level" else value
    if key in _NUMBERS:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if isinstance(value, bool) or not number >= _NUMBERS[key]:
            raise InputError(f"{what}: {value!r} must be a number >= {_NUMBERS[key]:g}")
        return number
    if key in ("port", "max_pdu", "workers"):
        if key == "port":
            return _port(value, what)
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "workers" else 0):
            raise InputError(f"{what}: {value!r} must be an integer >= {1 if key == 'workers' else 0}")
        return value
    if key == "device":
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return list(value)
        if isinstance(value, str):
            return value
        raise InputError(f"{what}: {value!r} must be a device (cpu, cuda, cuda:K) or a list of them")
    if key in ("folds", "factors"):
        if not isinstance(value, list) or not value:
            raise InputError(f"{what}: {value!r} must be a non-empty list")
        return [str(v) for v in value] if key == "folds" else [float(v) for v in value]
    raise InputError(f"{what}: unknown setting")  # pragma: no cover - load_config filters unknown keys


def example_config(spool: str = "/var/lib/nnunet-liver-node", model: str = "demo",
                   peers: Sequence[dict] = ({"ae_title": "ORTHANC", "host": "127.0.0.1"},),
                   destination: Optional[dict] = None) -> dict:
    """A complete configuration with every default, as ``nnunet-liver-node example-config`` prints it."""
    destination = destination or {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}
    cfg = NodeConfig(allowed_peers=[Peer.parse(p, "example") for p in peers],
                     destination=Destination.parse(destination, "example"), spool=spool, model=model)
    return cfg.to_dict()
