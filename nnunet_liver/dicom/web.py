"""DICOMweb (dicomweb-client): find studies (QIDO-RS), retrieve them (WADO-RS), store SEG + SR back (STOW-RS).

``nnunet-liver-detect --dicomweb URL --study UID [--push]`` and the node's DICOMweb destination use it.

Credentials never go on the command line or into a settings file; in order of precedence:

1. a credentials file named by ``--dicomweb-auth FILE`` (or the node's ``destination.auth_file``, or the
   environment variable ``NNUNET_LIVER_DICOMWEB_AUTH_FILE``): JSON, either ``{"token": "..."}`` (an OAuth2 / OIDC
   bearer token) or ``{"username": "...", "password": "..."}`` (HTTP basic);
2. ``NNUNET_LIVER_DICOMWEB_TOKEN`` (bearer), or ``NNUNET_LIVER_DICOMWEB_USER`` and
   ``NNUNET_LIVER_DICOMWEB_PASSWORD`` (HTTP basic);
3. otherwise the requests library's own: the user's ``~/.netrc`` entry for the server's host.

A STOW-RS response is checked instance by instance: a ``FailedSOPSequence`` with any item, or an instance the
server does not list in its ``ReferencedSOPSequence``, is an error (Orthanc answers every successful store with an
empty ``FailedSOPSequence``).
"""
from __future__ import annotations

import json
import os
from typing import Dict, Iterable, List, Optional, Sequence

import requests

from nnunet_liver.dicom.index import is_uid
from nnunet_liver.utils.io import InputError

__all__ = ["ENV_TOKEN", "ENV_USER", "ENV_PASSWORD", "ENV_AUTH_FILE", "read_auth", "make_client", "find_studies",
           "retrieve_study", "store_files", "check_stow_response", "StowError"]

ENV_TOKEN, ENV_USER, ENV_PASSWORD = "NNUNET_LIVER_DICOMWEB_TOKEN", "NNUNET_LIVER_DICOMWEB_USER", \
    "NNUNET_LIVER_DICOMWEB_PASSWORD"
ENV_AUTH_FILE = "NNUNET_LIVER_DICOMWEB_AUTH_FILE"
_STUDY_UID, _SERIES_UID, _MODALITY, _SOP_UID = "0020000D", "0020000E", "00080060", "00080018"


class StowError(RuntimeError):
    """A STOW-RS store that did not store every instance."""


def read_auth(auth_file: Optional[str] = None, environ: Optional[Dict[str, str]] = None):
    """The ``requests`` authentication from a credentials file or the environment (module docstring), or ``None``.

    Raises
    ------
    InputError
        an unreadable or malformed credentials file, or a user without a password.
    """
    environ = os.environ if environ is None else environ
    auth_file = auth_file or environ.get(ENV_AUTH_FILE) or None
    if auth_file:
        try:
            with open(auth_file, encoding="utf-8") as f:
                creds = json.load(f)
        except (OSError, ValueError) as e:
            raise InputError(f"{auth_file}: cannot read the DICOMweb credentials ({getattr(e, 'strerror', None) or e})"
                             ) from None
        if isinstance(creds, dict) and isinstance(creds.get("token"), str) and creds["token"]:
            return BearerAuth(creds["token"])
        if isinstance(creds, dict) and isinstance(creds.get("username"), str) and isinstance(creds.get("password"),
                                                                                             str):
            return requests.auth.HTTPBasicAuth(creds["username"], creds["password"])
        raise InputError(f"{auth_file}: DICOMweb credentials must be a JSON object with \"token\", or with "
                         f"\"username\" and \"password\"")
    if environ.get(ENV_TOKEN):
        return BearerAuth(environ[ENV_TOKEN])
    if environ.get(ENV_USER):
        if ENV_PASSWORD not in environ:
            raise InputError(f"{ENV_USER} is set but {ENV_PASSWORD} is not")
        return requests.auth.HTTPBasicAuth(environ[ENV_USER], environ[ENV_PASSWORD])
    return None


class BearerAuth(requests.auth.AuthBase):
    """``Authorization: Bearer TOKEN`` on every request (the token is never shown in its ``repr``)."""

    def __init__(self, token: str):
        self._token = token

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "BearerAuth(<token>)"


def make_client(url: str, auth_file: Optional[str] = None, timeout: float = 120.0):
    """A ``dicomweb_client.DICOMwebClient`` for the DICOMweb root ``url`` (e.g. Orthanc's
    ``http://host:8042/dicom-web``), authenticated as the module docstring says. Its own retries are off: the
    caller decides (the node retries deliveries with its back-off)."""
    from dicomweb_client.api import DICOMwebClient

    if not url.startswith(("http://", "https://")):
        raise InputError(f"--dicomweb {url!r}: not an http:// or https:// URL")
    session = requests.Session()
    auth = read_auth(auth_file)
    if auth is not None:
        session.auth = auth
    client = DICOMwebClient(url.rstrip("/"), session=session, timeout=timeout)
    client.set_http_retry_params(retry=False)
    return client


def _value(item: dict, tag: str) -> Optional[str]:
    values = item.get(tag, {}).get("Value") or []
    return str(values[0]) if values else None


def _http_error(url: str, e: Exception) -> Exception:
    """A one-line error for a failed HTTP exchange: bad input for 4xx (a wrong UID, URL or credentials), else a
    failed step."""
    response = getattr(e, "response", None)
    if isinstance(e, requests.HTTPError) and response is not None:
        reason = f"HTTP {response.status_code} {response.reason}"
        return (InputError if 400 <= response.status_code < 500 else RuntimeError)(f"{url}: {reason}")
    return RuntimeError(f"{url}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])


def find_studies(client, study_uids: Sequence[str] = (), query: Optional[Dict[str, str]] = None) -> List[str]:
    """The StudyInstanceUIDs to run: ``study_uids`` as given (checked), plus those a QIDO-RS study query finds
    (``query``: attribute keyword or tag -> value, e.g. ``{"ModalitiesInStudy": "CT", "StudyDate": "20240101-"}``).

    One QIDO-RS request is made in any case, so that a wrong URL or wrong credentials fail here (before the model
    loads): HTTP 4xx as :class:`InputError`, no answer or 5xx as ``RuntimeError``. A study not on the server fails
    later, as that study's error."""
    bad = [u for u in study_uids if not is_uid(u)]
    if bad:
        raise InputError(f"--study {bad[0]!r}: not a DICOM UID")
    uids = list(dict.fromkeys(study_uids))
    if not uids and not query:
        raise InputError(f"{client.base_url}: no study to run (give --study UID or --query KEY=VALUE)")
    filters = dict(query) if query else {"StudyInstanceUID": uids[0]}
    try:
        found = client.search_for_studies(search_filters=filters, get_remaining=bool(query))
    except (requests.RequestException, OSError) as e:
        raise _http_error(client.base_url, e) from None
    if query:
        uids += [u for u in (_value(item, _STUDY_UID) for item in found) if u and u not in uids]
    if not uids:
        raise InputError(f"{client.base_url}: the query {filters} found no study")
    return uids


def retrieve_study(client, study_uid: str, folder: str, modalities: Iterable[str] = ("CT",)) -> int:
    """Retrieve the series of ``study_uid`` whose modality is in ``modalities`` (QIDO-RS, then WADO-RS series by
    series) into ``folder`` as ``SOPInstanceUID.dcm`` files; returns the number of instances.

    Raises
    ------
    InputError
        the server knows no such study, or the study holds no series of those modalities.
    """
    try:
        series = client.search_for_series(study_instance_uid=study_uid)
    except (requests.RequestException, OSError) as e:
        raise _http_error(client.base_url, e) from None
    wanted = [s for s in series if (_value(s, _MODALITY) or "").upper() in {m.upper() for m in modalities}]
    if not series:
        raise InputError(f"{client.base_url}: study {study_uid} not found (QIDO-RS lists no series)")
    if not wanted:
        raise InputError(f"{client.base_url}: study {study_uid} holds no {'/'.join(modalities)} series")
    os.makedirs(folder, exist_ok=True)
    count = 0
    for s in wanted:
        series_uid = _value(s, _SERIES_UID)
        try:
            for ds in client.iter_series(study_uid, series_uid, media_types=(("application/dicom", "*"),)):
                sop = str(ds.SOPInstanceUID)
                if not is_uid(sop):
                    raise RuntimeError(f"{client.base_url}: series {series_uid} sent an instance without a valid "
                                       f"SOPInstanceUID")
                ds.save_as(os.path.join(folder, f"{sop}.dcm"), enforce_file_format=True)
                count += 1
        except (requests.RequestException, OSError) as e:
            raise _http_error(client.base_url, e) from None
    return count


def check_stow_response(response, sop_uids: Sequence[str], where: str) -> None:
    """Raise :class:`StowError` unless the STOW-RS response (a pydicom Dataset) confirms every one of
    ``sop_uids`` and lists no failed instance."""
    failed = list(response.get("FailedSOPSequence", None) or [])
    if failed:
        item = failed[0]
        reason = item.get("FailureReason", None)
        raise StowError(f"{where}: STOW-RS refused {len(failed)} instance(s) (first: "
                        f"{item.get('ReferencedSOPInstanceUID', '?')}, failure reason "
                        f"{'unknown' if reason is None else f'0x{int(reason):04X}'})")
    stored = {str(item.get("ReferencedSOPInstanceUID", "")) for item in response.get("ReferencedSOPSequence", [])}
    missing = [u for u in sop_uids if u not in stored]
    if missing:
        raise StowError(f"{where}: STOW-RS did not confirm {len(missing)} of {len(sop_uids)} instance(s) "
                        f"(first: {missing[0]})")


def _stow_failure_body(response):
    """The DICOM JSON dataset in an error response's body (STOW-RS 4xx answers may carry one), else ``None``."""
    import pydicom

    if response is None or not response.content:
        return None
    try:
        return pydicom.Dataset.from_json(response.json())
    except (ValueError, TypeError, KeyError):
        return None


def store_files(client, paths: Sequence[str], study_uid: Optional[str] = None) -> None:
    """STOW-RS the DICOM files ``paths`` (one request) and check the response (:func:`check_stow_response`).

    ``study_uid``: post to that study's URL (``/studies/UID``), so that the server refuses any file of another
    study; default: the files' own study when they share one.

    Raises :class:`StowError` for a refused instance or a failed HTTP exchange (no answer, an HTTP error)."""
    import pydicom

    datasets = [pydicom.dcmread(p) for p in paths]
    studies = {str(ds.StudyInstanceUID) for ds in datasets}
    study_uid = study_uid or (studies.pop() if len(studies) == 1 else None)
    try:
        response = client.store_instances(datasets, study_instance_uid=study_uid)
    except (requests.RequestException, OSError) as e:
        failure = _stow_failure_body(getattr(e, "response", None))
        if failure is not None:  # e.g. Orthanc's 409 Conflict, whose body lists the failed instances
            check_stow_response(failure, [str(ds.SOPInstanceUID) for ds in datasets], client.base_url)
        raise StowError(str(_http_error(client.base_url, e))) from None
    check_stow_response(response, [str(ds.SOPInstanceUID) for ds in datasets], client.base_url)
