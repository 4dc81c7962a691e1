"""The network block of the notebook tests (tests/netblock/sitecustomize.py), case by case:
TCP, UDP, raw sockets, the C-level _socket module, name look-ups, Python subprocesses and a real
notebook kernel. Loopback keeps working (kernels talk to papermill over it)."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

NETBLOCK = Path(__file__).parent / "netblock"
FAR = "93.184.216.34"

CASES = {
    "tcp create_connection": f"socket.create_connection(('{FAR}', 80), timeout=2)",
    "tcp socket.connect": f"socket.socket().connect(('{FAR}', 80))",
    "tcp connect_ex": f"socket.socket().connect_ex(('{FAR}', 80))",
    "tcp ipv6 connect": "socket.socket(socket.AF_INET6).connect(('2606:2800:220:1::', 80, 0, 0))",
    "udp sendto": f"socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('{FAR}', 53))",
    "udp sendto with flags": f"socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', 0, ('{FAR}', 53))",
    "udp connect": f"socket.socket(socket.AF_INET, socket.SOCK_DGRAM).connect(('{FAR}', 53))",
    "udp sendmsg": f"socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendmsg([b'x'], [], 0, ('{FAR}', 53))",
    "_socket connect": f"_socket.socket().connect(('{FAR}', 80))",
    "_socket udp sendto": f"_socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM).sendto(b'x', ('{FAR}', 53))",
    "raw socket": "socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)",
    "_socket raw socket": "_socket.socket(_socket.AF_INET, _socket.SOCK_RAW, _socket.IPPROTO_ICMP)",
    "packet socket": "socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM)",
    "getaddrinfo": "socket.getaddrinfo('example.com', 80)",
    "_socket getaddrinfo": "_socket.getaddrinfo('example.com', 80)",
    "gethostbyname": "socket.gethostbyname('example.com')",
    "urllib": "import urllib.request; urllib.request.urlopen('http://example.com', timeout=2)",
    "python subprocess udp": (
        "import subprocess, sys; r = subprocess.run([sys.executable, '-c', "
        f"\"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('{FAR}', 53))\"], "
        "capture_output=True, text=True); raise OSError(r.stderr.strip().splitlines()[-1])"),
}

PROBE = textwrap.dedent("""
    import _socket, json, socket, sys
    out = {}
    for name, code in json.loads(sys.argv[1]).items():
        try:
            exec(code)
            out[name] = "went out"
        except Exception as e:
            out[name] = "blocked" if "blocked" in str(e) else f"other: {type(e).__name__}: {e}"
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
    socket.create_connection(srv.getsockname(), timeout=2).close()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"hi", u.getsockname())
    out["loopback"] = u.recv(2).decode()
    a, b = socket.socketpair(); a.sendall(b"ok"); out["socketpair"] = b.recv(2).decode()
    print(json.dumps(out))
""")


def test_every_way_out_is_blocked_and_loopback_still_works():
    env = dict(os.environ, PYTHONPATH=str(NETBLOCK))
    res = subprocess.run([sys.executable, "-c", PROBE, json.dumps(CASES)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out.pop("loopback") == "hi" and out.pop("socketpair") == "ok"
    assert out == {name: "blocked" for name in CASES}


@pytest.mark.notebook
def test_network_is_blocked_inside_a_notebook_kernel(tmp_path, monkeypatch):
    import nbformat
    import papermill

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(NETBLOCK), os.environ.get("PYTHONPATH", "")]))
    cells = ["import _socket, json, socket\nout = {}"]
    for name in ("udp sendto", "_socket connect", "raw socket", "python subprocess udp"):
        cells.append(f"try:\n    exec({CASES[name]!r})\n    out[{name!r}] = 'went out'\n"
                     f"except Exception as e:\n    out[{name!r}] = 'blocked' if 'blocked' in str(e) else repr(e)")
    cells.append(f"open({str(tmp_path / 'out.json')!r}, 'w').write(json.dumps(out))")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "in.ipynb")
    papermill.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                               progress_bar=False)
    out = json.loads((tmp_path / "out.json").read_text())
    assert out == dict.fromkeys(out, "blocked") and len(out) == 4
