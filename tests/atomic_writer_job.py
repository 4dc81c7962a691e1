"""A writer killed mid-write by the atomic-write test (run as a subprocess).

usage: python tests/atomic_writer_job.py TARGET
Writes 4 MB checkpoints to TARGET through fer_nb.io.save_torch in a loop, alternating a tensor of
ones and a tensor of twos. torch.save is slowed down (the bytes go out in 64 KiB chunks with a short
sleep between them) so that a kill lands inside a write with near certainty.
"""
import io as _io
import sys
import time

import torch

from fer_nb import io

_real_save = torch.save


def slow_save(obj, fh):
    buf = _io.BytesIO()
    _real_save(obj, buf)
    data = buf.getvalue()
    for i in range(0, len(data), 1 << 16):
        fh.write(data[i:i + (1 << 16)])
        fh.flush()
        time.sleep(0.002)


torch.save = slow_save
target = sys.argv[1]
n = 0
while True:
    io.save_torch({"version": n % 2 + 1, "w": torch.full((1 << 20,), float(n % 2 + 1))}, target)
    n += 1
