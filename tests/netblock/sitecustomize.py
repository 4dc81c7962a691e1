"""Loaded by kernels started from the notebook tests (via PYTHONPATH): forbids any network
connection except to loopback, so a notebook that tries to download something fails loudly."""
import ipaddress
import socket

_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex
_getaddrinfo = socket.getaddrinfo


class NetworkBlockedError(OSError):
    pass


def _allowed(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guard(address):
    if not _allowed(address):
        raise NetworkBlockedError(f"network access to {address!r} is blocked in the book's tests")


def connect(self, address):
    _guard(address)
    return _connect(self, address)


def connect_ex(self, address):
    _guard(address)
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    if host not in (None, "localhost") and not _allowed((host, 0)):
        raise NetworkBlockedError(f"name lookup of {host!r} is blocked in the book's tests")
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect = connect
socket.socket.connect_ex = connect_ex
socket.getaddrinfo = getaddrinfo
