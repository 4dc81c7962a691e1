"""Loaded at start-up by every Python process whose PYTHONPATH holds this folder (the notebook
kernels of the tests, and the Python subprocesses they start, which inherit PYTHONPATH): forbids
any network traffic except to loopback and local (AF_UNIX) addresses, so a notebook that tries to
download something fails loudly.

Blocked, for ``socket.socket`` and for the C-level ``_socket.socket`` alike: TCP and UDP
``connect``/``connect_ex``, UDP ``sendto``/``sendmsg`` to a non-loopback address, creating raw
(``SOCK_RAW``) or packet (``AF_PACKET``) sockets, and name look-ups of non-local hosts.
Not covered (stated in book/reliability.md): non-Python subprocesses (``curl``, ``npm``), Python
subprocesses started with a cleared environment, and code that calls the C library directly
(``ctypes``).
"""
import _socket
import ipaddress
import socket

_LOCAL_NAMES = ("localhost", "", None, b"localhost", b"")


class NetworkBlockedError(OSError):
    pass


def _allowed(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    if not isinstance(address, tuple) or not address:
        return False
    host = address[0]
    if host in _LOCAL_NAMES:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _guard(address):
    if not _allowed(address):
        raise NetworkBlockedError(f"network access to {address!r} is blocked in the book's tests")


def _guard_family(family, type_):
    kind = int(type_) & 0xF if type_ is not None and type_ != -1 else 0
    if kind == int(socket.SOCK_RAW) or (hasattr(socket, "AF_PACKET") and family == socket.AF_PACKET):
        raise NetworkBlockedError(f"raw/packet sockets (family {family!r}, type {type_!r}) are blocked in the book's tests")


def _sendto_address(args):
    return args[-1] if len(args) in (2, 3) else None


def _sendmsg_address(args, kwargs):
    if "address" in kwargs:
        return kwargs["address"]
    return args[3] if len(args) >= 4 else None


def _wrap(cls, base):
    """Guarded methods for ``cls`` calling ``base``'s originals."""
    init, connect, connect_ex = base.__init__, base.connect, base.connect_ex
    sendto, sendmsg = base.sendto, getattr(base, "sendmsg", None)

    def __init__(self, family=-1, type=-1, *args, **kwargs):
        _guard_family(family, type)
        init(self, family, type, *args, **kwargs)

    def guarded_connect(self, address):
        _guard(address)
        return connect(self, address)

    def guarded_connect_ex(self, address):
        _guard(address)
        return connect_ex(self, address)

    def guarded_sendto(self, *args):
        address = _sendto_address(args)
        if address is not None:
            _guard(address)
        return sendto(self, *args)

    def guarded_sendmsg(self, *args, **kwargs):
        address = _sendmsg_address(args, kwargs)
        if address is not None:
            _guard(address)
        return sendmsg(self, *args, **kwargs)

    cls.__init__ = __init__
    cls.connect = guarded_connect
    cls.connect_ex = guarded_connect_ex
    cls.sendto = guarded_sendto
    if sendmsg is not None:
        cls.sendmsg = guarded_sendmsg


class _GuardedCSocket(_socket.socket):
    """What ``_socket.socket(...)`` now returns."""


_wrap(_GuardedCSocket, _socket.socket)
_wrap(socket.socket, socket.socket)
_socket.socket = _socket.SocketType = _GuardedCSocket


def _guard_host(host):
    if host not in _LOCAL_NAMES and not _allowed((host, 0)):
        raise NetworkBlockedError(f"name lookup of {host!r} is blocked in the book's tests")


def _lookup(original):
    def guarded(host, *args, **kwargs):
        _guard_host(host)
        return original(host, *args, **kwargs)

    guarded.__name__ = getattr(original, "__name__", "lookup")
    return guarded


for _name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
    _original = getattr(_socket, _name)
    setattr(socket, _name, _lookup(_original))
    setattr(_socket, _name, _lookup(_original))
