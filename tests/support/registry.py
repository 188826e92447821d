"""Throwaway OCI distribution registries for tests and benchmarks.

Starts Debian's ``docker-registry`` (distribution v2.8) bound to 127.0.0.1 on a
free port, with its storage, config, log and (optionally) TLS material and
htpasswd file inside a private temporary directory that is removed on stop.

Variants:

* plain HTTP (default) -- what most tests and the benchmark use;
* ``tls=True`` -- HTTPS with a throwaway CA and a server certificate for
  ``127.0.0.1``/``localhost`` made with the ``openssl`` CLI (the venv has no
  ``cryptography`` package); ``Registry.ca_cert`` / ``Registry.certs_dir``
  point clients at the CA;
* ``htpasswd={"user": "password"}`` -- basic auth. The registry only accepts
  bcrypt entries; they are made with libxcrypt (``libcrypt.so.1``, always on
  Debian) through ctypes, or the ``bcrypt`` package when that is installed.

Only the process this module started is ever signalled, by its PID.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import httpx

__all__ = [
    "REGISTRY_BINARY",
    "Registry",
    "RegistryError",
    "bcrypt_hash",
    "registry_available",
]

REGISTRY_BINARY = os.environ.get("BERTH_TEST_REGISTRY_BIN", "/usr/bin/docker-registry")

# Binding port 0 and handing the number to the registry leaves a short window
# in which another process can take the port; a handful of retries makes that
# race practically irrelevant.
_START_ATTEMPTS = 5


class RegistryError(RuntimeError):
    """The registry could not be started or did not become ready."""


def registry_available() -> bool:
    """True when the docker-registry binary is installed (tests skip otherwise)."""
    return os.access(REGISTRY_BINARY, os.X_OK)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _bcrypt_via_libcrypt(password: str, rounds: int) -> str | None:
    name = ctypes.util.find_library("crypt") or "libcrypt.so.1"
    try:
        lib = ctypes.CDLL(name)
        gensalt = lib.crypt_gensalt
        crypt = lib.crypt
    except (OSError, AttributeError):
        return None
    gensalt.restype = ctypes.c_char_p
    gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    crypt.restype = ctypes.c_char_p
    crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    # NULL random bytes: libxcrypt draws its own from the OS.
    salt = gensalt(b"$2y$", rounds, None, 0)
    if not salt:
        return None
    hashed = crypt(password.encode(), salt)
    # libxcrypt signals failure with a "*0"/"*1" string rather than NULL.
    if not hashed or not hashed.startswith(b"$2"):
        return None
    return str(hashed.decode())


def bcrypt_hash(password: str, rounds: int = 5) -> str:
    """Return a bcrypt hash (``$2y$...``) accepted by the registry's htpasswd auth.

    Low cost on purpose: the registry checks it on every request.
    """
    try:
        import bcrypt  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        pass
    else:
        return str(bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode())
    hashed = _bcrypt_via_libcrypt(password, rounds)
    if hashed is None:
        raise RegistryError(
            "htpasswd auth needs bcrypt: neither libcrypt with bcrypt support nor the "
            "'bcrypt' Python package is available (pip install bcrypt)"
        )
    return hashed


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RegistryError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def make_tls_material(directory: Path) -> tuple[Path, Path, Path]:
    """Create ``ca.crt``, ``server.crt`` and ``server.key`` in *directory*.

    The server certificate carries SANs for IP 127.0.0.1 and DNS localhost
    because Go's TLS stack ignores the CN. Returns (ca_cert, cert, key).
    """
    if shutil.which("openssl") is None:
        raise RegistryError("tls=True needs the openssl CLI")
    directory.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "7",
        "-subj", "/CN=berth-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1",
        cwd=directory,
    )  # fmt: skip
    (directory / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "7", "-extfile", "server.ext",
        cwd=directory,
    )  # fmt: skip
    return directory / "ca.crt", directory / "server.crt", directory / "server.key"


class Registry:
    """A docker-registry process on 127.0.0.1; start with ``start()`` or ``with``.

    Attributes once started: ``host`` ("127.0.0.1:PORT"), ``port``, ``url``
    ("http(s)://127.0.0.1:PORT"), ``scheme``, ``plain_http``, ``ca_cert`` and
    ``certs_dir`` (TLS only; ``certs_dir`` holds just ``ca.crt``, the layout
    skopeo's ``--cert-dir`` and containerd's ``hosts.toml`` ``ca`` expect),
    ``auth`` ((user, password) of the first htpasswd user or None),
    ``root`` (temp dir), ``storage_dir`` and ``log_path``.
    """

    def __init__(
        self,
        *,
        tls: bool = False,
        htpasswd: Mapping[str, str] | None = None,
        ready_timeout: float = 20.0,
        binary: str = REGISTRY_BINARY,
    ) -> None:
        self.tls = tls
        self.users: dict[str, str] = dict(htpasswd or {})
        self.ready_timeout = ready_timeout
        self.binary = binary
        self.root: Path | None = None
        self.port = 0
        self.ca_cert: Path | None = None
        self.certs_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: int | None = None

    # -- derived attributes -------------------------------------------------
    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def plain_http(self) -> bool:
        return not self.tls

    @property
    def host(self) -> str:
        self._require_started()
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def auth(self) -> tuple[str, str] | None:
        return next(iter(self.users.items()), None)

    @property
    def storage_dir(self) -> Path:
        return self._require_root() / "storage"

    @property
    def log_path(self) -> Path:
        return self._require_root() / "registry.log"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """Value for httpx's ``verify=``: a context trusting our CA, for TLS registries."""
        if self.ca_cert is None:
            return True
        return ssl.create_default_context(cafile=str(self.ca_cert))

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def client(self, **kwargs: object) -> httpx.Client:
        """An httpx client with base_url, auth and CA trust already set."""
        auth = httpx.BasicAuth(*self.auth) if self.auth else None
        return httpx.Client(
            base_url=self.url,
            auth=auth,
            verify=self.verify,
            timeout=30.0,
            **kwargs,  # type: ignore[arg-type]
        )

    def log_text(self) -> str:
        """The registry's log so far (useful in assertion messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, RegistryError):
            return ""

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> Registry:
        if self._proc is not None:
            raise RegistryError("registry already started")
        if not os.access(self.binary, os.X_OK):
            raise RegistryError(f"{self.binary} not found; apt-get install docker-registry")
        self.root = Path(tempfile.mkdtemp(prefix="berth-registry-"))
        try:
            self._prepare()
            last_error: Exception | None = None
            for _ in range(_START_ATTEMPTS):
                try:
                    self._spawn_and_wait()
                    return self
                except _PortTaken as exc:
                    last_error = exc
            raise RegistryError(f"could not bind a free port: {last_error}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Terminate the registry (by PID) and delete its temp dir. Idempotent."""
        self._kill()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"127.0.0.1:{self.port}" if self.port else "not started"
        return f"<Registry {self.scheme} {where}>"

    # -- internals ----------------------------------------------------------
    def _require_root(self) -> Path:
        if self.root is None:
            raise RegistryError("registry not started")
        return self.root

    def _require_started(self) -> Path:
        if not self.port:
            raise RegistryError("registry not started")
        return self._require_root()

    def _prepare(self) -> None:
        assert self.root is not None
        (self.root / "storage").mkdir()
        if self.tls:
            self.ca_cert, _, _ = make_tls_material(self.root / "tls")
            self.certs_dir = self.root / "certs.d"
            self.certs_dir.mkdir()
            shutil.copy(self.ca_cert, self.certs_dir / "ca.crt")
        if self.users:
            lines = [f"{user}:{bcrypt_hash(pw)}\n" for user, pw in self.users.items()]
            (self.root / "htpasswd").write_text("".join(lines))

    def _write_config(self, port: int) -> Path:
        assert self.root is not None
        root = self.root
        # JSON is valid YAML, which spares a YAML dependency and quoting worries.
        http: dict[str, object] = {
            "addr": f"127.0.0.1:{port}",
            # A fixed secret silences the "No HTTP secret provided" warning;
            # it only signs upload-session state.
            "secret": secrets.token_hex(16),
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        }
        if self.tls:
            http["tls"] = {
                "certificate": str(root / "tls" / "server.crt"),
                "key": str(root / "tls" / "server.key"),
            }
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}, "formatter": "text"},
            "storage": {
                "filesystem": {"rootdirectory": str(root / "storage")},
                "delete": {"enabled": True},
                "cache": {"blobdescriptor": "inmemory"},
                # Upload purging is a background goroutine that only adds noise.
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http,
        }
        if self.users:
            config["auth"] = {"htpasswd": {"realm": "berth-test", "path": str(root / "htpasswd")}}
        path = root / "config.yml"
        path.write_text(json.dumps(config, indent=2))
        return path

    def _spawn_and_wait(self) -> None:
        assert self.root is not None
        port = _free_port()
        config = self._write_config(port)
        # REGISTRY_* variables override config.yml keys; never inherit any.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        log_fd = os.open(self.root / "registry.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        self._log_file = log_fd
        self._proc = subprocess.Popen(
            [self.binary, "serve", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            env=env,
            cwd=self.root,
            start_new_session=True,  # keep terminal signals (^C) away from it
        )
        self.port = port
        deadline = time.monotonic() + self.ready_timeout
        with httpx.Client(verify=self.verify, timeout=2.0) as probe:
            while True:
                code = self._proc.poll()
                if code is not None:
                    log = self.log_text()
                    self._kill()
                    self.port = 0
                    if "address already in use" in log:
                        raise _PortTaken(f"port {port} taken")
                    raise RegistryError(f"docker-registry exited with {code}:\n{log[-4000:]}")
                try:
                    # 200 when open, 401 with auth: either way it is serving.
                    resp = probe.get(f"{self.scheme}://127.0.0.1:{port}/v2/")
                    if resp.status_code in (200, 401):
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    log = self.log_text()
                    self._kill()
                    self.port = 0
                    raise RegistryError(
                        f"registry not ready after {self.ready_timeout}s:\n{log[-4000:]}"
                    )
                time.sleep(0.02)

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            # Signal the exact PID we spawned, never a name or a group.
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if self._log_file is not None:
            with contextlib.suppress(OSError):
                os.close(self._log_file)
            self._log_file = None


class _PortTaken(RegistryError):
    """The chosen port was grabbed between probing and binding; retry."""
