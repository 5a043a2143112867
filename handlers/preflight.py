"""Checks before TorchServe starts, each failing with one line that says what to change.

TorchServe itself reports a busy port or a missing Java only in its logs, after the caller has
waited for a health check that cannot pass (90 s). Stdlib only.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shutil
import socket
import subprocess
import urllib.parse

MIN_JAVA = 11  # TorchServe 0.12's frontend needs Java 11 or newer (17 is what it is built for)
ADDRESS_KEYS = {"inference_address": "inference", "management_address": "management",
                "metrics_address": "metrics"}


class PreflightError(RuntimeError):
    """TorchServe cannot start here; the message is one line naming the cause and the fix."""


def host_port(address: str) -> tuple[str, int]:
    """('127.0.0.1', 8080) from 'http://127.0.0.1:8080' (IPv6 hosts without their brackets)."""
    parts = urllib.parse.urlsplit(address)
    if not parts.hostname or parts.port is None:
        raise PreflightError(f"address {address!r} in the config has no host:port")
    return parts.hostname, parts.port


def port_is_free(host: str, port: int) -> bool:
    """Whether a listening socket could bind host:port now (SO_REUSEADDR, as servers set it,
    so a port in TIME_WAIT after a stop is free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def check_ports(properties: dict[str, str], config_name: str = "config.properties") -> None:
    """Every address of the config is free, or PreflightError naming the first busy one."""
    for key, role in ADDRESS_KEYS.items():
        if key not in properties:
            continue
        host, port = host_port(properties[key])
        if not port_is_free(host, port):
            raise PreflightError(
                f"{host}:{port} ({role} API) is already in use: stop what listens there "
                f"(a running server: `make stop`) or change {key} in {config_name}")


def require_loopback(address: str) -> str:
    """`address` (without a trailing /) when its host is a loopback one; PreflightError else."""
    host = urllib.parse.urlsplit(address).hostname or ""
    try:
        is_loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        is_loopback = False
    if not is_loopback:
        raise PreflightError(f"management_address {address} is not a loopback address: with "
                             "enable_model_api=true the management API must stay on 127.0.0.1")
    return address.rstrip("/")


def check_management(properties: dict[str, str]) -> None:
    """The management API registers and removes models: loopback only while it may."""
    if properties.get("enable_model_api", "false").lower() == "true":
        require_loopback(properties.get("management_address", "http://127.0.0.1:8081"))


def java_command(environ: dict[str, str] | None = None) -> str | None:
    """The java TorchServe's launcher will run: $JAVA_HOME/bin/java, else java on PATH."""
    environ = os.environ if environ is None else environ
    if environ.get("JAVA_HOME"):
        candidate = os.path.join(environ["JAVA_HOME"], "bin", "java")
        return candidate if os.access(candidate, os.X_OK) else None
    return shutil.which("java", path=environ.get("PATH"))


def java_major(version_output: str) -> int | None:
    """The major version in `java -version`'s output ('1.8.0_392' -> 8, '17.0.15' -> 17)."""
    found = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not found:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def check_java(environ: dict[str, str] | None = None) -> int:
    """The Java major version, or PreflightError when Java is missing, broken or too old."""
    java = java_command(environ)
    if java is None:
        raise PreflightError(f"Java not found (TorchServe needs Java >= {MIN_JAVA}): install a JDK "
                             "(e.g. `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME")
    try:
        result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PreflightError(f"{java} -version failed ({exc}); fix the Java install or JAVA_HOME") from None
    major = java_major(result.stderr + result.stdout)
    if major is None:
        raise PreflightError(f"{java} -version printed no version; fix the Java install or JAVA_HOME")
    if major < MIN_JAVA:
        raise PreflightError(f"{java} is Java {major}; TorchServe needs Java >= {MIN_JAVA} "
                             "(install openjdk-17 or point JAVA_HOME at a newer JDK)")
    return major
