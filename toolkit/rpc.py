"""Devices of other machines, joined through llama.cpp's RPC backend (`--rpc`, `toolkit rpc-server`).

Each machine runs llama.cpp's `ggml-rpc-server` (built by `toolkit setup --tools`); a run names
them with `--rpc HOST:PORT,…` and their devices join the ones llama.cpp sees here, so layers can
be placed on them as on local GPUs. llama.cpp aborts the process when a server cannot be reached
or stops answering: the servers are tried here before anything is loaded, and the abort is turned
into one line (and whatever the run already wrote stays written).

The protocol has no authentication: a server bound beyond loopback lets anyone who can reach the
port run code on its devices, so the server binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import sys
from dataclasses import dataclass
from typing import Callable

from . import backend, console, tools
from .errors import UserError

DEFAULT_PORT = 50052  # llama.cpp's rpc-server default
SERVER = "ggml-rpc-server"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse(spec: str) -> list[Endpoint]:
    """"HOST:PORT[,HOST:PORT…]" (an IPv6 host in brackets) → endpoints, in order, each once."""
    endpoints: list[Endpoint] = []
    for part in (p.strip() for p in spec.split(",")):
        host, sep, port = part.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(f"--rpc: {part or '(empty)'!s} is not HOST:PORT (e.g. 127.0.0.1:{DEFAULT_PORT})")
        endpoint = Endpoint(host, int(port))
        if endpoint in endpoints:
            raise UserError(f"--rpc: {endpoint} is named twice")
        endpoints.append(endpoint)
    return endpoints


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_reachable(endpoints: list[Endpoint], timeout: float = 3.0) -> None:
    """A TCP connection to each server, before llama.cpp tries (it aborts the process on failure)."""
    for endpoint in endpoints:
        try:
            with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout):
                pass
        except OSError as e:
            reason = e.strerror or type(e).__name__.lower()
            if isinstance(e, socket.timeout):
                reason = f"no answer in {timeout:g} s"
            raise UserError(f"the RPC server {endpoint} is unreachable ({reason.lower()}); start it there with "
                            f"`toolkit rpc-server --port {endpoint.port}` (or drop it from --rpc)") from None


_joined: dict[Endpoint, list[str]] = {}  # llama.cpp keeps a server's devices for the process's life


def join(endpoints: list[Endpoint]) -> list[str]:
    """Register each server's devices with llama.cpp (as its `--rpc` does); their device names
    ("RPC0[127.0.0.1:50052]" …), in order. Servers are checked first: unreachable is a UserError."""
    if not endpoints:
        return []
    lib = backend.ggml()
    if not lib.ggml_backend_reg_by_name(b"RPC"):
        raise UserError("this llama.cpp build has no RPC backend: run `bash scripts/setup.sh` again "
                        "(it builds with GGML_RPC=ON)")
    check_reachable(endpoints)  # joined before in this process or not: llama.cpp reconnects, or aborts
    reg = lib.ggml_backend_reg_by_name(b"RPC")
    add = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(
        lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_rpc_add_server"))
    names: list[str] = []
    for endpoint in endpoints:
        if endpoint not in _joined:
            before = {d.name for d in backend.devices()}
            server_reg = add(str(endpoint).encode())
            lib.ggml_backend_register(server_reg)
            _joined[endpoint] = [d.name for d in backend.devices() if d.name not in before]
        names += _joined[endpoint]
    return names


def lost_server(endpoints: list[Endpoint]) -> Endpoint | None:
    """The first of `endpoints` that no longer accepts a connection."""
    for endpoint in endpoints:
        try:
            check_reachable([endpoint], timeout=1.0)
        except UserError:
            return endpoint
    return None


_abort_callbacks: list = []  # referenced for the process's life: llama.cpp keeps the pointer


def on_abort(endpoints: list[Endpoint], then: Callable[[], str]) -> None:
    """llama.cpp aborts the process when a server stops answering mid-run ("Remote RPC server
    crashed …"); print one line instead of its message and backtrace, and exit with code 2.
    `then()` says what the user keeps and does next (infer: the answers written, and resume)."""
    lib = backend.ggml()

    @backend.ABORT_CALLBACK
    def callback(message: bytes) -> None:
        text = (message or b"").decode("utf-8", "replace").split(": ", 1)[-1].strip()
        lost = lost_server(endpoints)
        who = f"the RPC server {lost}" if lost else "an RPC server"
        try:
            hint = then()
        except BaseException:  # noqa: BLE001 - the process ends either way; the line must come out
            hint = ""
        sys.stdout.flush()
        sys.stderr.write(f"error: {who} stopped answering mid-run (llama.cpp: {text}){'; ' + hint if hint else ''}\n")
        sys.stderr.flush()
        os._exit(2)

    _abort_callbacks.append(callback)
    lib.ggml_set_abort_callback(callback)


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    devices: tuple[str, ...] = ()  # e.g. ("CUDA0",); none: every GPU, else the CPU (llama.cpp's choice)
    cache: bool = False  # keep large tensors on disk there, so a second load sends only their hashes
    threads: int | None = None  # for a CPU device


def server_command(binary: str, settings: ServerSettings) -> list[str]:
    cmd = [binary, "--host", settings.host, "--port", str(settings.port)]
    if settings.devices:
        cmd += ["--device", ",".join(settings.devices)]
    if settings.threads:
        cmd += ["--threads", str(settings.threads)]
    if settings.cache:
        cmd.append("--cache")
    return cmd


def check_server_settings(settings: ServerSettings) -> None:
    """What llama.cpp's rpc-server would refuse, or report only on its stdout, as one line here."""
    try:
        ipaddress.IPv4Address(settings.host)  # it binds numeric IPv4 addresses only
    except ValueError:
        raise UserError(f"--host: {settings.host!r} is not an IPv4 address (llama.cpp's rpc-server binds only "
                        "those; 127.0.0.1 for this machine alone, 0.0.0.0 for every interface)") from None
    known = {d.name.lower(): d.name for d in backend.devices()}
    for name in settings.devices:
        if name.lower() not in known:
            raise UserError(f"--device: no device {name!r} here; there are {', '.join(known.values())}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((settings.host, settings.port))
        except OSError as e:
            raise UserError(f"cannot listen on {settings.host}:{settings.port}: {(e.strerror or str(e)).lower()} "
                            "(another rpc-server there? choose another --port)") from None


def serve(settings: ServerSettings) -> None:
    """Become llama.cpp's rpc-server (the process is replaced: stopping it stops the server)."""
    built = tools.require_tool(SERVER)
    check_server_settings(settings)
    if not is_loopback(settings.host):
        console.warn(f"the RPC server listens on {settings.host}: RPC has no authentication, so anyone who can reach "
                     f"port {settings.port} can use this machine's devices and memory; use it only on a network you "
                     "trust (or keep 127.0.0.1 and tunnel)")
    console.notice(f"rpc-server: llama.cpp's {SERVER} on {settings.host}:{settings.port}; join it with "
                   f"`--rpc {'<this machine>' if not is_loopback(settings.host) else settings.host}:{settings.port}`"
                   " (Ctrl-C stops it)")
    sys.stdout.flush()
    sys.stderr.flush()
    cmd = server_command(str(built), settings)
    os.execv(cmd[0], cmd)
