"""The registry client: resolve references, fetch and push content (OCI distribution API).

Design notes
------------
*One resolver, many endpoints.* A :class:`Resolver` is built from a
:data:`~berth.core.remotes.hosts.RegistryHosts` function (``hosts.toml``
directories by default) and a credentials provider. For each reference it
asks for the endpoints of the reference's host and tries them in order,
restricted to those with the needed capability (``resolve`` for tags,
``pull`` for content, ``push`` for uploads), exactly as containerd does.
Endpoints with the same TLS settings share one ``httpx.AsyncClient`` (and
its connection pool); the resolver owns them, so close it (``async with``).

*Every request goes through* :meth:`Resolver._send`, which adds the
configured headers and authorization, learns from ``401`` challenges (see
:mod:`.auth`), retries ``408``/``429``/``5xx`` answers and timeouts with
exponential backoff (honouring a short ``Retry-After``) up to
:class:`RetryPolicy` ``attempts``, and turns the rest into
:mod:`.errors`. Transport failures are retried only when the request can be
replayed (it has no body, or the body is rebuilt from a factory).

*Bytes are verified, not trusted.* Manifests are read whole (bounded by
:data:`~berth.core.images.MAX_MANIFEST_SIZE`) and checked against their
digest and size before anyone sees them; blob streams are verified by the
content store's ``copy_into`` on commit. A blob stream that breaks mid-way is
reopened with ``Range: bytes=N-`` from where it stopped, within the same
retry budget, so one dropped connection does not restart a large layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.parse import urlencode

import httpx

import berth
from berth import errdefs
from berth.core.content import Descriptor as ContentDescriptor
from berth.core.content import Digest, Digester
from berth.core.images import mediatypes as mt
from berth.core.images.manifest import MAX_MANIFEST_SIZE, Descriptor, check_manifest_media_type
from berth.core.remotes.auth import Authorizer, CredentialsProvider
from berth.core.remotes.errors import (
    Forbidden,
    RegistryError,
    RegistryUnavailable,
    Unauthorized,
    UnexpectedStatus,
    first_error,
)
from berth.core.remotes.hosts import Capability, RegistryHost, RegistryHosts, configure_hosts
from berth.core.remotes.reference import Reference

log = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_ACCEPT_MANIFESTS = ", ".join([*mt.MANIFEST_ACCEPT, "*/*"])
#: Stream chunk size for blob downloads.
_READ_CHUNK = 1 << 20

Body = bytes | AsyncIterable[bytes]
BodyFactory = Callable[[], Body]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded exponential backoff for transient registry failures.

    ``attempts`` counts tries in total (so 5 means 4 retries); the n-th retry
    waits ``base_delay * 2**(n-1)`` seconds, jittered to 50-100%, at most
    ``max_delay``. A ``Retry-After`` longer than ``max_delay`` is capped.
    """

    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 5.0

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        d = min(self.base_delay * (2 ** (retry - 1)), self.max_delay)
        return d * random.uniform(0.5, 1.0)


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        import datetime

        when = parsedate_to_datetime(value)
        return (when - datetime.datetime.now(when.tzinfo)).total_seconds()
    except (TypeError, ValueError):
        return None


def _registry_message(resp: httpx.Response) -> str:
    """The ``errors[].message`` of a distribution error body, if any."""
    try:
        body = resp.json()
    except (ValueError, httpx.ResponseNotRead):
        return ""
    if not isinstance(body, dict) or not isinstance(body.get("errors"), list):
        return ""
    parts = []
    for err in body["errors"]:
        if isinstance(err, dict):
            code, msg = err.get("code", ""), err.get("message", "")
            parts.append(f"{code}: {msg}" if code else str(msg))
    return "; ".join(p for p in parts if p)


def _content_type(resp: httpx.Response) -> str:
    return resp.headers.get("content-type", "").split(";", 1)[0].strip()


class Resolver:
    """Resolves references and hands out fetchers and pushers for them.

    Keyword arguments:
        hosts: endpoint lookup; default ``configure_hosts(config_path, plain_http=...)``.
        config_path: a ``certs.d``-style directory of ``<host>/hosts.toml``.
        plain_http: use HTTP for hosts without explicit configuration.
        credentials: host -> :class:`~berth.core.remotes.auth.Credentials`.
        retry: the :class:`RetryPolicy` for transient failures.
        timeout: per-operation network timeout in seconds (connect, each read).
        headers: extra headers for every request.
    """

    def __init__(
        self,
        *,
        hosts: RegistryHosts | None = None,
        config_path: str | None = None,
        plain_http: bool = False,
        credentials: CredentialsProvider | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._hosts = hosts or configure_hosts(config_path, plain_http=plain_http)
        self.authorizer = Authorizer(credentials)
        self.retry = retry or RetryPolicy()
        self._timeout = timeout
        self._headers = {"User-Agent": f"berth/{berth.__version__}", **dict(headers or {})}
        self._clients: dict[tuple[object, ...], httpx.AsyncClient] = {}
        self._closed = False

    async def __aenter__(self) -> Resolver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every HTTP client. Idempotent."""
        self._closed = True
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    # -- endpoints and clients ---------------------------------------------

    async def hosts_for(self, ref: Reference, caps: Capability) -> list[RegistryHost]:
        """Endpoints of ``ref``'s registry having ``caps``, in order.

        Raises NotFound when none has them.
        """
        hosts = await asyncio.to_thread(self._hosts, ref.domain)
        usable = [h for h in hosts if h.has(caps)]
        if not usable:
            names = "/".join(c.name.lower() for c in Capability if c & caps)  # type: ignore[union-attr]
            raise errdefs.NotFound(f"no {names} hosts configured for {ref.domain}")
        return usable

    async def client_for(self, host: RegistryHost) -> httpx.AsyncClient:
        if self._closed:
            raise errdefs.FailedPrecondition("resolver is closed")
        key = host.tls_key()
        client = self._clients.get(key)
        if client is None:
            verify: ssl.SSLContext | bool = True
            if host.scheme == "https":
                verify = await asyncio.to_thread(_ssl_context, host)
            client = httpx.AsyncClient(
                verify=verify,
                timeout=httpx.Timeout(self._timeout, connect=min(self._timeout, 30.0)),
                follow_redirects=True,
                limits=httpx.Limits(max_connections=16, max_keepalive_connections=8),
            )
            self._clients[key] = client
        return client

    # -- the one request path ------------------------------------------------

    async def _send(
        self,
        host: RegistryHost,
        method: str,
        url: str,
        *,
        scopes: Sequence[str],
        headers: Mapping[str, str] | None = None,
        body: BodyFactory | None = None,
        stream: bool = False,
        authorize: bool = True,
        retry_transport: bool = True,
    ) -> httpx.Response:
        """Send with auth, challenge handling and retries; returns the final response.

        A ``401`` that authentication cannot fix raises Unauthorized; a
        retryable status or a transport error still failing after the last
        attempt raises RegistryUnavailable. Other statuses are returned for
        the caller to judge. With ``stream`` the caller must close the response.
        ``retry_transport`` False fails at once on a broken connection (for
        requests whose partial effect on the server is unknown).
        """
        client = await self.client_for(host)
        attempt = 0
        auth_rounds = 0
        sent_auth = False
        replayable = body is None or callable(body)
        while True:
            attempt += 1
            req_headers = dict(self._headers)
            req_headers.update(dict(host.headers))
            req_headers.update(headers or {})
            sent_auth = False
            if authorize:
                value = await self.authorizer.authorization(client, host.host, scopes)
                if value is not None:
                    req_headers["Authorization"] = value
                    sent_auth = True
            content = body() if body is not None else None
            request = client.build_request(method, url, headers=req_headers, content=content)
            log.debug("registry request %s %s", method, url)
            try:
                resp = await client.send(request, stream=stream)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                tls = _tls_error(exc)
                if tls is not None:
                    # Retrying cannot fix trust; say how to configure it.
                    raise RegistryError(
                        f"{method} {url}: TLS failure talking to {host.host}: {tls}; trust its CA "
                        f"with 'ca' in its hosts.toml (or set skip_verify for testing)",
                        url=url,
                    ) from None
                if replayable and retry_transport and attempt < self.retry.attempts:
                    delay = self.retry.delay(attempt)
                    log.info(
                        "registry %s %s failed (%s), retrying in %.2fs",
                        method,
                        url,
                        type(exc).__name__,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                raise RegistryUnavailable(
                    f"{method} {url}: {type(exc).__name__}: {exc} (after {attempt} attempts)",
                    url=url,
                ) from None
            log.debug("registry response %s %s: %d", method, url, resp.status_code)

            if resp.status_code == 401 and authorize:
                values = resp.headers.get_list("www-authenticate")
                await resp.aclose()
                auth_rounds += 1
                if auth_rounds > 3:
                    raise Unauthorized(
                        f"unauthorized: {host.host} kept refusing authorization for {url}",
                        status=401,
                        url=url,
                    )
                self.authorizer.handle_unauthorized(
                    host.host, values, url=url, retried=sent_auth, scopes=scopes
                )
                if not replayable:
                    raise Unauthorized(
                        f"unauthorized: {host.host} asked for credentials mid-upload ({url})",
                        status=401,
                        url=url,
                    )
                attempt -= 1  # an auth round trip is not a failure
                continue
            if resp.status_code == 405 and method == "HEAD" and "/manifests/" in url:
                # Some registries do not implement HEAD on manifests.
                await resp.aclose()
                method = "GET"
                attempt -= 1
                continue
            if resp.status_code in _RETRY_STATUSES:
                if replayable and attempt < self.retry.attempts:
                    delay = self.retry.delay(attempt, _retry_after(resp))
                    await resp.aclose()
                    log.info(
                        "registry %s %s answered %d, retrying in %.2fs",
                        method,
                        url,
                        resp.status_code,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                with contextlib.suppress(httpx.HTTPError):
                    await resp.aread()  # error bodies are small; they explain the failure
                message = _registry_message(resp)
                await resp.aclose()
                raise RegistryUnavailable(
                    f"{method} {url}: {resp.status_code} {resp.reason_phrase}"
                    + (f" ({message})" if message else "")
                    + f" after {attempt} attempts",
                    status=resp.status_code,
                    url=url,
                )
            return resp

    async def _fail(
        self, resp: httpx.Response, host: RegistryHost, what: str
    ) -> RegistryError | errdefs.BerthError:
        """The error for a final non-success response (the body is consumed)."""
        with contextlib.suppress(httpx.HTTPError):
            await resp.aread()
        await resp.aclose()
        message = _registry_message(resp)
        detail = f": {message}" if message else ""
        url = str(resp.request.url)
        if resp.status_code == 404:
            return errdefs.NotFound(f"{what}: not found{detail}")
        if resp.status_code == 403:
            return Forbidden(
                f"denied: {host.host} refused access for {what} (403 Forbidden){detail}",
                status=403,
                url=url,
            )
        if resp.status_code == 401:
            return Unauthorized(
                f"unauthorized: {host.host} refused access for {what}{detail}", status=401, url=url
            )
        return UnexpectedStatus(
            f"{what}: unexpected status from {host.host}: {resp.status_code} "
            f"{resp.reason_phrase}{detail}",
            status=resp.status_code,
            url=url,
        )

    # -- resolve --------------------------------------------------------------

    async def resolve(self, ref: str | Reference) -> tuple[str, Descriptor]:
        """The descriptor ``ref`` names, and the normalised reference string.

        By tag: ``HEAD /v2/<repo>/manifests/<tag>`` (``GET`` when the answer
        lacks a digest or length) on endpoints with ``resolve``. By digest:
        the manifest, then the blob, on endpoints with ``pull``.

        Raises InvalidArgument (bad reference, unsupported media type,
        manifest over the size limit, invalid digest header), NotFound (no
        such tag or digest on any endpoint), Unauthorized / Forbidden, or
        RegistryUnavailable; with several endpoints, the first error seen.
        """
        spec = ref if isinstance(ref, Reference) else Reference.parse(ref)
        caps = Capability.PULL
        if spec.digest is not None:
            paths = [f"manifests/{spec.digest}", f"blobs/{spec.digest}"]
        else:
            paths = [f"manifests/{spec.tag}"]
            caps |= Capability.RESOLVE
        hosts = await self.hosts_for(spec, caps)
        scopes = [f"repository:{spec.repository}:pull"]
        first_error: BaseException | None = None
        for path in paths:
            for host in hosts:
                try:
                    desc = await self._resolve_at(spec, host, path, scopes)
                except errdefs.NotFound:
                    continue
                except (errdefs.BerthError, OSError) as exc:
                    log.info(
                        "resolving %s on %s failed: %s; trying next host", spec, host.host, exc
                    )
                    if first_error is None:
                        first_error = exc
                    continue
                return str(spec), desc
        if first_error is not None:
            raise first_error
        raise errdefs.NotFound(f"{spec}: not found")

    def _url(self, host: RegistryHost, spec: Reference, path: str) -> str:
        url = f"{host.base_url}/{spec.repository}/{path}"
        if host.is_proxy(spec.domain):
            url += "?" + urlencode({"ns": spec.domain})
        return url

    async def _resolve_at(
        self, spec: Reference, host: RegistryHost, path: str, scopes: Sequence[str]
    ) -> Descriptor:
        url = self._url(host, spec, path)
        headers = {"Accept": _ACCEPT_MANIFESTS}
        resp = await self._send(host, "HEAD", url, scopes=scopes, headers=headers)
        if resp.status_code >= 300:
            raise await self._fail(resp, host, f"{spec}")
        media_type = _content_type(resp)
        digest = spec.digest
        header_digest = resp.headers.get("docker-content-digest", "")
        size = int(resp.headers["content-length"]) if "content-length" in resp.headers else -1
        if resp.request.method == "GET":
            size = len(resp.content)  # HEAD was refused and became a GET
        if digest is None and header_digest and size >= 0:
            try:
                digest = Digest.parse(header_digest)
            except errdefs.InvalidArgument as exc:
                raise errdefs.InvalidArgument(
                    f"{host.host} sent an invalid Docker-Content-Digest for {spec}: {exc}"
                ) from None
        if size > MAX_MANIFEST_SIZE:
            raise errdefs.InvalidArgument(
                f"rejecting {size} byte manifest for {spec}: over the "
                f"{MAX_MANIFEST_SIZE} byte limit"
            )
        needs_body = (
            digest is None or size < 0 or not mt.is_manifest_or_index(media_type)
        ) and not path.startswith("blobs/")
        if needs_body:
            log.debug("no usable digest, length or media type for %s: fetching the manifest", spec)
            data, media_type = await self._get_manifest_body(host, url, scopes, str(spec))
            size = len(data)
            actual = (
                Digest.from_bytes(data, digest.algorithm) if digest else Digest.from_bytes(data)
            )
            if digest is None:
                digest = actual
            elif actual != digest:
                raise errdefs.FailedPrecondition(
                    f"manifest for {spec} from {host.host} has digest {actual}, expected {digest}"
                )
        assert digest is not None
        check_manifest_media_type(media_type, f"manifest for {spec}")
        return Descriptor(media_type=media_type, digest=digest, size=size)

    async def _get_manifest_body(
        self, host: RegistryHost, url: str, scopes: Sequence[str], what: str
    ) -> tuple[bytes, str]:
        resp = await self._send(
            host, "GET", url, scopes=scopes, headers={"Accept": _ACCEPT_MANIFESTS}, stream=True
        )
        try:
            if resp.status_code >= 300:
                raise await self._fail(resp, host, what)
            data = await _read_limited(resp, MAX_MANIFEST_SIZE, what)
        finally:
            await resp.aclose()
        media_type = _content_type(resp)
        if not mt.is_manifest_or_index(media_type):
            # Some registries serve manifests as application/json; the
            # document's own mediaType field then says what it is.
            import json

            try:
                doc = json.loads(data)
            except ValueError:
                doc = None
            declared = doc.get("mediaType") if isinstance(doc, dict) else None
            if isinstance(declared, str) and mt.is_manifest_or_index(declared):
                media_type = declared
        return data, media_type

    # -- fetch and push -------------------------------------------------------

    def fetcher(self, ref: str | Reference) -> Fetcher:
        """A :class:`Fetcher` for content of ``ref``'s repository."""
        spec = ref if isinstance(ref, Reference) else Reference.parse(ref)
        return Fetcher(self, spec)

    def pusher(self, ref: str | Reference) -> Pusher:
        """A :class:`Pusher` into ``ref``'s repository (tagging with its tag)."""
        spec = ref if isinstance(ref, Reference) else Reference.parse(ref)
        return Pusher(self, spec)


def _tls_error(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


async def _read_limited(resp: httpx.Response, limit: int, what: str) -> bytes:
    declared = resp.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise errdefs.InvalidArgument(
            f"rejecting {declared} byte manifest for {what}: over the {limit} byte limit"
        )
    buf = bytearray()
    async for chunk in resp.aiter_bytes():
        buf += chunk
        if len(buf) > limit:
            raise errdefs.InvalidArgument(
                f"rejecting manifest for {what}: body exceeds the {limit} byte limit"
            )
    return bytes(buf)


def _ssl_context(host: RegistryHost) -> ssl.SSLContext:
    """TLS settings of an endpoint: system CAs plus ``ca``, client certs, skip_verify."""
    ctx = ssl.create_default_context()
    for path in host.ca_certs:
        try:
            ctx.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            raise errdefs.InvalidArgument(f"unable to load CA cert {path!r}: {exc}") from None
    for cert, key in host.client_pairs:
        try:
            ctx.load_cert_chain(cert, key or None)
        except (OSError, ssl.SSLError) as exc:
            raise errdefs.InvalidArgument(
                f"failed to load client key pair {cert!r}/{key!r}: {exc}"
            ) from None
    if host.skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class BlobStream:
    """An open download: ``read()`` chunks until ``b""``; reconnects by Range.

    A connection that breaks, or ends before ``desc.size`` bytes, is reopened
    at the current offset; each reopen uses one attempt of the resolver's
    retry policy. The bytes are not verified here (``copy_into`` does it).
    """

    def __init__(self, fetcher: Fetcher, desc: ContentDescriptor, offset: int) -> None:
        self._fetcher = fetcher
        self._desc = desc
        self.offset = offset
        self._resp: httpx.Response | None = None
        self._iter: AsyncIterator[bytes] | None = None
        self._reopens = 0

    async def _open(self) -> None:
        self._resp = await self._fetcher._open_response(self._desc, self.offset)
        # No chunk_size: httpx would otherwise buffer up to it, and lose the
        # buffer when the connection breaks (the bytes could not be resumed from).
        self._iter = self._resp.aiter_raw()

    async def read(self) -> bytes:
        """The next chunk, ``b""`` at the end. Raises as :meth:`Fetcher.open`."""
        while True:
            if self._iter is None:
                await self._open()
            assert self._iter is not None
            try:
                chunk = await anext(self._iter)
            except StopAsyncIteration:
                size = self._desc.size
                if size > 0 and self.offset < size:
                    await self._reopen(f"stream ended at {self.offset} of {size} bytes")
                    continue
                return b""
            except (httpx.TransportError, httpx.StreamError) as exc:
                await self._reopen(f"{type(exc).__name__}: {exc}")
                continue
            self.offset += len(chunk)
            return chunk

    async def _reopen(self, why: str) -> None:
        await self.aclose()
        self._reopens += 1
        policy = self._fetcher.resolver.retry
        if self._reopens >= policy.attempts:
            raise RegistryUnavailable(
                f"downloading {self._desc.digest} failed at byte {self.offset}: {why} "
                f"(gave up after {self._reopens} attempts)"
            )
        log.info(
            "download of %s broke at byte %d (%s); resuming", self._desc.digest, self.offset, why
        )
        await asyncio.sleep(policy.delay(self._reopens))

    async def aclose(self) -> None:
        resp, self._resp, self._iter = self._resp, None, None
        if resp is not None:
            await resp.aclose()


class Fetcher:
    """Downloads manifests and blobs of one repository."""

    def __init__(self, resolver: Resolver, ref: Reference) -> None:
        self.resolver = resolver
        self.ref = ref
        self._scopes = [f"repository:{ref.repository}:pull"]

    async def open(self, desc: ContentDescriptor, offset: int = 0) -> BlobStream:
        """Start downloading ``desc`` at ``offset``. Raises NotFound, Unauthorized,
        Forbidden, UnexpectedStatus or RegistryUnavailable."""
        stream = BlobStream(self, desc, offset)
        await stream._open()
        return stream

    async def _open_response(self, desc: ContentDescriptor, offset: int) -> httpx.Response:
        hosts = await self.resolver.hosts_for(self.ref, Capability.PULL)
        kind = "manifests" if mt.is_manifest_or_index(desc.media_type) else "blobs"
        headers = {"Accept": f"{desc.media_type}, */*" if desc.media_type else "*/*"}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
        first_error: BaseException | None = None
        urls = list(getattr(desc, "urls", ()) or ())
        targets: list[tuple[RegistryHost, str, bool]] = []
        for u in urls:
            parsed = httpx.URL(u)
            if parsed.scheme in ("http", "https"):
                # Foreign layers: fetched from their own URLs without registry auth.
                targets.append(
                    (RegistryHost(host=parsed.netloc.decode(), scheme=parsed.scheme), u, False)
                )
        for host in hosts:
            targets.append(
                (host, self.resolver._url(host, self.ref, f"{kind}/{desc.digest}"), True)
            )
        for host, url, authorize in targets:
            try:
                resp = await self.resolver._send(
                    host,
                    "GET",
                    url,
                    scopes=self._scopes,
                    headers=headers,
                    stream=True,
                    authorize=authorize,
                )
            except (errdefs.BerthError, OSError) as exc:
                first_error = first_error or exc
                continue
            if resp.status_code >= 300:
                err = await self.resolver._fail(
                    resp, host, f"{kind[:-1]} {desc.digest} in {self.ref.name}"
                )
                if not isinstance(err, errdefs.NotFound):
                    first_error = first_error or err
                continue
            try:
                await _position(resp, offset)
            except BaseException:
                await resp.aclose()
                raise
            return resp
        if first_error is not None:
            raise first_error
        raise errdefs.NotFound(
            f"could not fetch content descriptor {desc.digest} ({desc.media_type}) from remote: not found"
        )

    async def fetch_bytes(
        self, desc: ContentDescriptor, *, limit: int = MAX_MANIFEST_SIZE
    ) -> bytes:
        """The whole of a small blob (a manifest, a config), verified.

        Raises InvalidArgument if it is, or claims to be, larger than
        ``limit``; FailedPrecondition if size or digest do not match ``desc``.
        """
        what = f"{desc.media_type or 'blob'} {desc.digest}"
        if desc.size > limit:
            raise errdefs.InvalidArgument(
                f"rejecting {desc.size} byte {what}: over the {limit} byte limit"
            )
        stream = await self.open(desc)
        buf = bytearray()
        digester = Digester(desc.digest.algorithm)
        try:
            while chunk := await stream.read():
                buf += chunk
                digester.update(chunk)
                if len(buf) > limit:
                    raise errdefs.InvalidArgument(
                        f"rejecting {what}: body exceeds the {limit} byte limit"
                    )
                if desc.size > 0 and len(buf) > desc.size:
                    break
        finally:
            await stream.aclose()
        verify_bytes(desc, bytes(buf), digester.digest())
        return bytes(buf)


def verify_bytes(desc: ContentDescriptor, data: bytes, actual: Digest | None = None) -> None:
    """Raise FailedPrecondition unless ``data`` has ``desc``'s size and digest."""
    if desc.size > 0 and len(data) != desc.size:
        raise errdefs.FailedPrecondition(
            f"unexpected size {len(data)} for {desc.digest}, expected {desc.size}"
        )
    actual = actual or Digest.from_bytes(data, desc.digest.algorithm)
    if actual != desc.digest:
        raise errdefs.FailedPrecondition(
            f"unexpected digest {actual} for content served as {desc.digest}"
        )


async def _position(resp: httpx.Response, offset: int) -> None:
    """Make a (possibly range) response start at ``offset``."""
    if offset <= 0:
        return
    if resp.status_code == 206:
        content_range = resp.headers.get("content-range", "")
        if not content_range.startswith(f"bytes {offset}-"):
            raise UnexpectedStatus(f"unhandled content range in response: {content_range!r}")
        return
    # The server ignored Range and sent everything: skip what we have.
    skipped = 0
    chunks = resp.aiter_raw(_READ_CHUNK)
    async for chunk in chunks:
        need = offset - skipped
        if len(chunk) >= need:
            resp.aiter_raw = _prepend(chunk[need:], chunks)  # type: ignore[method-assign]
            return
        skipped += len(chunk)
    raise errdefs.Unavailable(f"unable to discard to offset {offset}: body ended at {skipped}")


def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> Callable[..., AsyncIterator[bytes]]:
    """An ``aiter_raw`` replacement yielding ``first`` then the rest of a stream."""

    def aiter_raw(chunk_size: int | None = None) -> AsyncIterator[bytes]:
        async def gen() -> AsyncIterator[bytes]:
            if first:
                yield first
            async for more in rest:
                yield more

        return gen()

    return aiter_raw


PushOutcome = Literal["exists", "mounted", "uploaded"]
#: ``reader(offset, length)`` streams a blob's bytes from a local store.
BlobReader = Callable[[int, int], AsyncIterator[bytes]]


class Pusher:
    """Uploads blobs and manifests into one repository."""

    def __init__(self, resolver: Resolver, ref: Reference) -> None:
        self.resolver = resolver
        self.ref = ref
        self._scopes = [f"repository:{ref.repository}:pull,push"]

    async def _host(self) -> RegistryHost:
        # containerd pushes to the first push-capable endpoint only.
        return (await self.resolver.hosts_for(self.ref, Capability.PUSH))[0]

    async def exists(self, desc: ContentDescriptor) -> bool:
        """Whether the repository already has ``desc`` (``HEAD``)."""
        host = await self._host()
        kind = "manifests" if mt.is_manifest_or_index(desc.media_type) else "blobs"
        url = self.resolver._url(host, self.ref, f"{kind}/{desc.digest}")
        resp = await self.resolver._send(
            host, "HEAD", url, scopes=self._scopes, headers={"Accept": f"{desc.media_type}, */*"}
        )
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        raise await self.resolver._fail(resp, host, f"checking {desc.digest} in {self.ref.name}")

    async def push_blob(
        self,
        desc: ContentDescriptor,
        reader: BlobReader,
        *,
        mount_from: str | None = None,
        chunk_size: int = 0,
        on_bytes: Callable[[int], None] | None = None,
    ) -> PushOutcome:
        """Upload a blob unless the repository has it; returns what happened.

        ``mount_from`` names a repository on the same registry that has the
        blob: a cross-repository mount is tried first (``POST
        /blobs/uploads/?mount=<digest>&from=<repo>``), falling back to an
        upload when the registry declines. ``chunk_size`` > 0 uploads in
        ``PATCH`` chunks of that size, else in one ``PUT``. ``on_bytes`` gets
        the running count of bytes sent.

        Raises Unauthorized/Forbidden, UnexpectedStatus (e.g. the registry's
        digest does not match), RegistryUnavailable.
        """
        if await self.exists(desc):
            return "exists"
        host = await self._host()
        base = self.resolver._url(host, self.ref, "blobs/uploads/")
        resp: httpx.Response | None = None
        if mount_from:
            scopes = [*self._scopes, f"repository:{mount_from}:pull"]
            url = (
                base
                + ("&" if "?" in base else "?")
                + urlencode({"mount": str(desc.digest), "from": mount_from})
            )
            resp = await self.resolver._send(host, "POST", url, scopes=scopes, body=lambda: b"")
            if resp.status_code == 201:
                log.debug("mounted %s from %s into %s", desc.digest, mount_from, self.ref.name)
                return "mounted"
            if resp.status_code != 202:
                log.debug(
                    "mount of %s from %s refused (%d)", desc.digest, mount_from, resp.status_code
                )
                await resp.aclose()
                resp = None
        if resp is None:
            resp = await self.resolver._send(
                host, "POST", base, scopes=self._scopes, body=lambda: b""
            )
        if resp.status_code == 201:
            return "exists"
        if resp.status_code not in (200, 202, 204):
            raise await self.resolver._fail(resp, host, f"starting upload of {desc.digest}")
        location = self._location(host, resp)
        what = f"upload of {desc.digest} to {self.ref.name}"

        def counting(offset: int, length: int) -> BodyFactory:
            def make() -> AsyncIterator[bytes]:
                async def gen() -> AsyncIterator[bytes]:
                    done = 0
                    async for chunk in reader(offset, length):
                        done += len(chunk)
                        if on_bytes is not None:
                            on_bytes(offset + done)
                        yield chunk

                return gen()

            return make

        if chunk_size > 0 and desc.size > chunk_size:
            offset = 0
            while offset < desc.size:
                length = min(chunk_size, desc.size - offset)
                headers = {
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(length),
                    "Content-Range": f"{offset}-{offset + length - 1}",
                }
                # After a broken connection the server may hold part of the
                # chunk, so the upload offset is unknown: no transport retries.
                resp = await self.resolver._send(
                    host,
                    "PATCH",
                    location,
                    scopes=self._scopes,
                    headers=headers,
                    body=counting(offset, length),
                    authorize=_same_origin(location, host),
                    retry_transport=False,
                )
                if resp.status_code != 202:
                    raise await self.resolver._fail(resp, host, what)
                location = self._location(host, resp)
                offset += length
            put_url = _with_digest(location, desc.digest)
            resp = await self.resolver._send(
                host,
                "PUT",
                put_url,
                scopes=self._scopes,
                headers={"Content-Length": "0"},
                body=lambda: b"",
                authorize=_same_origin(put_url, host),
            )
        else:
            put_url = _with_digest(location, desc.digest)
            resp = await self.resolver._send(
                host,
                "PUT",
                put_url,
                scopes=self._scopes,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(desc.size),
                },
                body=counting(0, desc.size),
                authorize=_same_origin(put_url, host),
            )
        if resp.status_code not in (200, 201, 204):
            raise await self.resolver._fail(resp, host, what)
        await resp.aclose()
        returned = resp.headers.get("docker-content-digest")
        if returned and returned != str(desc.digest):
            raise UnexpectedStatus(
                f"{what}: registry stored digest {returned}, expected {desc.digest}"
            )
        return "uploaded"

    def _location(self, host: RegistryHost, resp: httpx.Response) -> str:
        location = resp.headers.get("location")
        if not location:
            raise UnexpectedStatus(
                f"upload to {self.ref.name}: {host.host} sent no Location header",
                status=resp.status_code,
            )
        return str(httpx.URL(f"{host.scheme}://{host.host}/").join(location))

    async def push_manifest(
        self, desc: ContentDescriptor, data: bytes, *, tag: str | None = None
    ) -> None:
        """``PUT`` a manifest or index under ``tag`` (or its digest).

        Raises InvalidArgument if ``data`` does not match ``desc``; the
        registry's refusal (e.g. missing children) as UnexpectedStatus.
        """
        try:
            verify_bytes(desc, data)
        except errdefs.FailedPrecondition as exc:
            raise errdefs.InvalidArgument(str(exc)) from None
        host = await self._host()
        reference = tag or str(desc.digest)
        url = self.resolver._url(host, self.ref, f"manifests/{reference}")
        resp = await self.resolver._send(
            host,
            "PUT",
            url,
            scopes=self._scopes,
            headers={"Content-Type": desc.media_type},
            body=lambda: data,
        )
        if resp.status_code not in (200, 201, 204):
            err = await self.resolver._fail(resp, host, f"manifest {reference} of {self.ref.name}")
            if mt.is_index(desc.media_type) and resp.status_code == 400:
                raise UnexpectedStatus(
                    f"{err}; the index references manifests or blobs missing in the target registry",
                    status=400,
                )
            raise err
        await resp.aclose()
        returned = resp.headers.get("docker-content-digest")
        if returned and returned != str(desc.digest):
            raise UnexpectedStatus(
                f"registry stored manifest {reference} as {returned}, expected {desc.digest}"
            )


def _same_origin(url: str, host: RegistryHost) -> bool:
    u = httpx.URL(url)
    return u.scheme == host.scheme and u.netloc.decode() == host.host


def _with_digest(location: str, digest: Digest) -> str:
    url = httpx.URL(location)
    return str(url.copy_merge_params({"digest": str(digest)}))


async def gather_limited(limit: int, jobs: Sequence[Callable[[], Awaitable[None]]]) -> None:
    """Run ``jobs`` with at most ``limit`` at once; the first failure cancels the rest."""
    sem = asyncio.Semaphore(max(1, limit))

    async def run(job: Callable[[], Awaitable[None]]) -> None:
        async with sem:
            await job()

    try:
        async with asyncio.TaskGroup() as tg:
            for job in jobs:
                tg.create_task(run(job))
    except BaseExceptionGroup as group:
        raise first_error(group) from None
