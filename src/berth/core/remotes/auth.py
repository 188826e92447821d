"""Registry authentication: challenges, credentials, Basic and Bearer tokens.

The flow is the distribution spec's: a request goes out anonymously (or with
what worked before for that host); a ``401`` carries ``WWW-Authenticate``
challenges; for ``Basic`` the credentials are attached, for ``Bearer`` a token
is fetched from the challenge's ``realm`` (``GET ?service=&scope=``, with the
credentials as Basic auth when there are any) and attached. Tokens are cached
per host and per scope set, so a pull asks once per repository.

Secrets never reach a log line, an exception message or a ``repr``:
:class:`Credentials` hides them and this module logs only hosts, schemes and
scopes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from berth import errdefs
from berth.core.remotes.errors import Unauthorized

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: lowercase scheme and parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


_SEPARATORS = set(' \t"(),/:;<=>?@[]\\{}')


def _is_token_char(c: str) -> bool:
    o = ord(c)
    return 32 < o < 127 and c not in _SEPARATORS


def _token(s: str, i: int) -> tuple[str, int]:
    start = i
    while i < len(s) and _is_token_char(s[i]):
        i += 1
    return s[start:i], i


def _skip_space(s: str, i: int) -> int:
    while i < len(s) and s[i] in " \t\r\n":
        i += 1
    return i


def _token_or_quoted(s: str, i: int) -> tuple[str | None, int]:
    if i >= len(s) or s[i] != '"':
        return _token(s, i)
    i += 1
    out: list[str] = []
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            out.append(s[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    return None, i  # unterminated quote


def parse_challenge(value: str) -> Challenge | None:
    """Parse one header value (``Bearer realm="...",service="..."``).

    Parameter names are lowercased; parsing stops at the first malformed
    parameter, keeping those before it. None when there is no scheme token.
    """
    scheme, i = _token(value, _skip_space(value, 0))
    if not scheme:
        return None
    params: dict[str, str] = {}
    while True:
        i = _skip_space(value, i)
        key, i = _token(value, i)
        if not key or i >= len(value) or value[i] != "=":
            break
        raw, i = _token_or_quoted(value, i + 1)
        if raw is None:
            break
        params[key.lower()] = raw
        i = _skip_space(value, i)
        if i >= len(value) or value[i] != ",":
            break
        i += 1
    return Challenge(scheme.lower(), params)


_SCHEME_ORDER = {"bearer": 0, "digest": 1, "basic": 2}


def parse_www_authenticate(values: Iterable[str]) -> list[Challenge]:
    """Challenges from all ``WWW-Authenticate`` values, strongest first
    (Bearer, then Digest, then Basic); unknown schemes are dropped."""
    out = []
    for v in values:
        c = parse_challenge(v)
        if c is not None and c.scheme in _SCHEME_ORDER:
            out.append(c)
    return sorted(out, key=lambda c: _SCHEME_ORDER[c.scheme])


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username and a secret (password or identity token). The secret is
    excluded from ``repr``; an empty username with a secret is an identity
    (refresh) token."""

    username: str
    secret: str = field(repr=False)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.secret}".encode()
        return "Basic " + base64.b64encode(raw).decode()


#: host ("127.0.0.1:5000", "docker.io") -> credentials, or None for anonymous.
CredentialsProvider = Callable[[str], Credentials | None]


def _config_keys(host: str) -> list[str]:
    keys = [host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/"]
    if host in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        keys += [
            "https://index.docker.io/v1/",
            "index.docker.io",
            "docker.io",
            "registry-1.docker.io",
        ]
    return keys


def parse_docker_config(text: str, *, source: str = "config.json") -> dict[str, Credentials]:
    """Credentials by registry key from a Docker ``config.json`` text.

    Each ``auths`` entry may give ``auth`` (base64 ``user:password``),
    ``username``/``password``, or ``identitytoken``. Raises InvalidArgument for
    invalid JSON or an undecodable ``auth`` (the message names the registry
    key, never the value). Credential helpers (``credsStore``) are not run.
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise errdefs.InvalidArgument(
            f"{source}: invalid JSON: {exc.msg} at line {exc.lineno}"
        ) from None
    if not isinstance(doc, dict):
        raise errdefs.InvalidArgument(f"{source}: expected a JSON object")
    auths = doc.get("auths")
    if auths is None:
        auths = {}
    if not isinstance(auths, dict):
        raise errdefs.InvalidArgument(f"{source}: 'auths' must be an object")
    out: dict[str, Credentials] = {}
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            continue
        username = entry.get("username") or ""
        password = entry.get("password") or ""
        encoded = entry.get("auth") or ""
        if encoded:
            try:
                decoded = base64.b64decode(encoded, validate=False).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise errdefs.InvalidArgument(
                    f"{source}: auths[{key!r}].auth is not base64 of user:password"
                ) from None
            user, sep, pw = decoded.partition(":")
            if not sep:
                raise errdefs.InvalidArgument(
                    f"{source}: auths[{key!r}].auth is not base64 of user:password"
                )
            username, password = user, pw
        token = entry.get("identitytoken") or ""
        if token:
            out[key] = Credentials("", str(token))
        elif username or password:
            out[key] = Credentials(str(username), str(password))
    return out


def docker_config_credentials(path: str | None = None) -> CredentialsProvider:
    """Credentials from a Docker ``config.json`` (default: ``$DOCKER_CONFIG/config.json``
    or ``~/.docker/config.json``). A missing file means anonymous access.

    The file is read once, now (blocking). Raises InvalidArgument if it is broken.
    """
    if path is None:
        base = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
        path = os.path.join(base, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            table = parse_docker_config(f.read(), source=path)
    except FileNotFoundError:
        table = {}
    return credentials_from_table(table)


def credentials_from_table(table: Mapping[str, Credentials]) -> CredentialsProvider:
    """A provider looking ``host`` up under the key spellings Docker uses."""

    def lookup(host: str) -> Credentials | None:
        for key in _config_keys(host):
            creds = table.get(key)
            if creds is not None:
                return creds
        return None

    return lookup


def static_credentials(host: str, username: str, secret: str) -> CredentialsProvider:
    """Explicit credentials for one host (``ctr --user``)."""
    creds = Credentials(username, secret)
    return credentials_from_table({host: creds})


def chain_credentials(*providers: CredentialsProvider | None) -> CredentialsProvider:
    """The first provider that knows the host wins (explicit before config files)."""

    def lookup(host: str) -> Credentials | None:
        for p in providers:
            if p is not None:
                creds = p(host)
                if creds is not None:
                    return creds
        return None

    return lookup


@dataclass
class _Token:
    value: str
    expires_at: float


@dataclass
class _HostAuth:
    """What works for one host: a scheme, credentials, and bearer parameters."""

    scheme: str
    credentials: Credentials | None
    realm: str = ""
    service: str = ""
    challenge_scopes: tuple[str, ...] = ()
    tokens: dict[str, _Token] = field(default_factory=dict)
    pending: dict[str, asyncio.Future[_Token]] = field(default_factory=dict)


class Authorizer:
    """Adds ``Authorization`` to registry requests and learns from 401s.

    One per resolver; safe for concurrent use on one event loop. ``client``
    is used for token requests (a per-host client is passed in by the
    resolver so the token endpoint sees the same TLS settings).
    """

    #: A token without ``expires_in`` lives 60 s per the token spec.
    DEFAULT_TOKEN_LIFETIME = 60.0

    def __init__(self, credentials: CredentialsProvider | None = None) -> None:
        self._credentials = credentials
        self._hosts: dict[str, _HostAuth] = {}

    def has_credentials(self, host: str) -> bool:
        return self._credentials is not None and self._credentials(host) is not None

    async def authorization(
        self, client: httpx.AsyncClient, host: str, scopes: Iterable[str]
    ) -> str | None:
        """The header value to send to ``host`` for ``scopes``, or None (anonymous)."""
        state = self._hosts.get(host)
        if state is None:
            return None
        if state.scheme == "basic":
            return state.credentials.basic_header() if state.credentials else None
        scope_key = " ".join(sorted(set(scopes) | set(state.challenge_scopes)))
        token = await self._token(client, host, state, scope_key)
        return f"Bearer {token.value}"

    def handle_unauthorized(
        self,
        host: str,
        values: Iterable[str],
        *,
        url: str,
        retried: bool,
        scopes: Iterable[str] = (),
    ) -> None:
        """Learn from a 401's ``WWW-Authenticate`` values so a retry can succeed.

        ``retried`` says the request already carried our authorization.
        Raises :class:`Unauthorized` when retrying cannot help: no supported
        challenge, credentials needed but none configured, or credentials or
        a token refused.
        """
        challenges = parse_www_authenticate(values)
        creds = self._credentials(host) if self._credentials else None
        state = self._hosts.get(host)
        for c in challenges:
            if c.scheme == "bearer":
                if retried and state is not None and state.scheme == "bearer":
                    # Our token was refused: forget it; a second refusal is final.
                    scope_key = " ".join(sorted(set(scopes) | set(state.challenge_scopes)))
                    state.tokens.pop(scope_key, None)
                    raise _refused(host, url, creds, c.params.get("error", ""))
                realm = c.params.get("realm", "")
                if not realm:
                    raise Unauthorized(
                        f"unauthorized: {host} sent a Bearer challenge without a realm ({url})",
                        status=401,
                        url=url,
                    )
                scope_param = c.params.get("scope", "")
                self._hosts[host] = _HostAuth(
                    scheme="bearer",
                    credentials=creds,
                    realm=realm,
                    service=c.params.get("service", ""),
                    challenge_scopes=tuple(s for s in scope_param.split(" ") if s),
                )
                log.debug("registry %s wants bearer tokens from %s", host, realm)
                return
            if c.scheme == "basic":
                if creds is None or not creds.username:
                    raise _needs_credentials(host, url)
                if retried and state is not None and state.scheme == "basic":
                    raise _refused(host, url, creds, "")
                self._hosts[host] = _HostAuth(scheme="basic", credentials=creds)
                log.debug("registry %s wants basic auth", host)
                return
        if retried or not challenges:
            raise Unauthorized(
                f"unauthorized: {host} refused the request and offered no supported "
                f"authentication scheme ({url})",
                status=401,
                url=url,
            )
        raise _needs_credentials(host, url)

    async def _token(
        self, client: httpx.AsyncClient, host: str, state: _HostAuth, scope_key: str
    ) -> _Token:
        cached = state.tokens.get(scope_key)
        if cached is not None and cached.expires_at > time.monotonic():
            return cached
        pending = state.pending.get(scope_key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[_Token] = asyncio.get_running_loop().create_future()
        state.pending[scope_key] = fut
        try:
            token = await self._fetch_token(client, host, state, scope_key)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved; waiters re-raise it themselves
            raise
        else:
            fut.set_result(token)
            state.tokens[scope_key] = token
            return token
        finally:
            state.pending.pop(scope_key, None)

    async def _fetch_token(
        self, client: httpx.AsyncClient, host: str, state: _HostAuth, scope_key: str
    ) -> _Token:
        import httpx

        params: list[tuple[str, str | int | float | bool | None]] = []
        if state.service:
            params.append(("service", state.service))
        params += [("scope", s) for s in scope_key.split(" ") if s]
        headers = {}
        if state.credentials is not None and state.credentials.secret:
            headers["Authorization"] = state.credentials.basic_header()
        log.debug("fetching registry token for %s (scopes: %s)", host, scope_key or "-")
        try:
            resp = await client.get(state.realm, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise Unauthorized(
                f"unauthorized: fetching a token for {host} from {state.realm} failed: {type(exc).__name__}",
                url=state.realm,
            ) from None
        if resp.status_code in (401, 403):
            raise _refused(
                host, state.realm, state.credentials, f"token endpoint answered {resp.status_code}"
            )
        if resp.status_code != 200:
            raise Unauthorized(
                f"unauthorized: token endpoint {state.realm} for {host} answered "
                f"{resp.status_code} {resp.reason_phrase}",
                status=resp.status_code,
                url=state.realm,
            )
        try:
            body = resp.json()
        except ValueError:
            body = None
        value = ""
        lifetime = self.DEFAULT_TOKEN_LIFETIME
        if isinstance(body, dict):
            value = str(body.get("token") or body.get("access_token") or "")
            expires = body.get("expires_in")
            if isinstance(expires, int | float) and expires > 0:
                lifetime = float(expires)
        if not value:
            raise Unauthorized(
                f"unauthorized: token endpoint {state.realm} for {host} returned no token",
                url=state.realm,
            )
        # Renew a little early so a token never expires in flight.
        return _Token(value, time.monotonic() + max(lifetime - 5.0, lifetime / 2))


def _needs_credentials(host: str, url: str) -> Unauthorized:
    return Unauthorized(
        f"unauthorized: {host} requires authentication and no credentials are configured "
        f"for it; pass credentials (e.g. ctr --user USER:PASSWORD, or an 'auths' entry for "
        f"{host!r} in a Docker config.json)",
        status=401,
        url=url,
    )


def _refused(host: str, url: str, creds: Credentials | None, server_error: str) -> Unauthorized:
    if creds is None:
        # An anonymous token was not enough: the repository needs a login.
        return _needs_credentials(host, url)
    who = f"user {creds.username!r}" if creds and creds.username else "the configured credentials"
    detail = f" (server message: {server_error})" if server_error else ""
    return Unauthorized(
        f"unauthorized: {host} refused {who}{detail}; check the username and password "
        f"configured for {host!r}",
        status=401,
        url=url,
    )
