#!/usr/bin/env python3
"""An independent reader of Spark sort-shuffle output, for tests.

Usage: spark_reader.py DIR[,DIR...] SUBDIRS SHUFFLE MAP REDUCE  -> writes the partition bytes.
Implements Spark's ExecutorDiskUtils placement (Java String.hashCode over UTF-16) and the
.index format (big-endian i64 cumulative offsets) without sharing code with the service.
"""
import os
import struct
import sys


def java_hash(s: str) -> int:
    h = 0
    data = s.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + ((data[i] << 8) | data[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h >= (1 << 31) else h


def place(dirs, subdirs, name):
    h = java_hash(name)
    h = 0 if h == -(1 << 31) else abs(h)
    d = dirs[h % len(dirs)]
    return os.path.join(d, "%02x" % ((h // len(dirs)) % subdirs), name)


def main():
    dirs = sys.argv[1].split(",")
    subdirs, shuffle, mp, reduce = (int(x) for x in sys.argv[2:6])
    base = f"shuffle_{shuffle}_{mp}_0"
    with open(place(dirs, subdirs, base + ".index"), "rb") as f:
        raw = f.read()
    offsets = struct.unpack(">%dq" % (len(raw) // 8), raw)
    start, end = offsets[reduce], offsets[reduce + 1]
    with open(place(dirs, subdirs, base + ".data"), "rb") as f:
        f.seek(start)
        sys.stdout.buffer.write(f.read(end - start))


if __name__ == "__main__":
    main()
