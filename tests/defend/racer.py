"""The unprivileged side of the wipe attacks, run as ``nobody`` with a descriptor of a directory.

It works only through the descriptor it was given (``*at`` calls), as an attacker with write
access to one directory of the tree would. Standard library only: it runs with ``python -I -S``.

``serve FD``: one tab-separated command per stdin line, one answer line (``ok`` or ``err N``):

- ``swap NAME TARGET``: rename NAME to NAME.moved and put a symlink NAME -> TARGET in its place;
- ``symlink NAME TARGET``: plant a symlink;
- ``hardlink NAME TARGET``: try to hard-link TARGET as NAME.

``race FD NAME=TARGET...``: until stdin closes, turn every NAME into a symlink to its TARGET, then
back into what it was, over and over; prints the number of swaps made.
"""

from __future__ import annotations

import os
import select
import sys
import time

RACE_LIMIT_S = 120.0


def serve(fd: int) -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, name, target = line.rstrip("\n").split("\t")
        try:
            if cmd == "swap":
                os.rename(name, name + ".moved", src_dir_fd=fd, dst_dir_fd=fd)
                os.symlink(target, name, dir_fd=fd)
            elif cmd == "symlink":
                os.symlink(target, name, dir_fd=fd)
            elif cmd == "hardlink":
                os.link(target, name, dst_dir_fd=fd)
            else:
                raise OSError(0, f"unknown command {cmd}")
            print("ok", flush=True)
        except OSError as exc:
            print(f"err {exc.errno}", flush=True)


def race(fd: int, pairs: list[tuple[str, str]]) -> None:
    swaps = 0
    end = time.monotonic() + RACE_LIMIT_S
    print("ready", flush=True)
    while time.monotonic() < end and not select.select([sys.stdin], [], [], 0)[0]:
        away = []
        for name, target in pairs:
            try:
                os.rename(name, name + ".away", src_dir_fd=fd, dst_dir_fd=fd)
            except OSError:
                continue
            away.append(name)
            try:
                os.symlink(target, name, dir_fd=fd)
                swaps += 1
            except OSError:
                pass
        for name in away:
            try:
                os.unlink(name, dir_fd=fd)
            except OSError:
                pass
            try:
                os.rename(name + ".away", name, src_dir_fd=fd, dst_dir_fd=fd)
            except OSError:
                pass
    print(swaps, flush=True)


if __name__ == "__main__":
    mode, fd_text, *rest = sys.argv[1:]
    if mode == "serve":
        serve(int(fd_text))
    else:
        race(int(fd_text), [tuple(p.split("=", 1)) for p in rest])  # type: ignore[misc]
