"""A power-cut file system (FUSE, in memory), with the semantics of LazyFS:
every write is kept in memory until it is made durable, and a "power cut"
throws away everything that was not.

- file data becomes durable with `fsync`/`fdatasync` of that file;
- a directory entry (create, mkdir, mknod, rename, unlink, rmdir) becomes
  durable with `fsync` of that directory (each directory on its own);
- on a cut, every directory gets back its entries as of its last fsync, and
  every file its data as of its last fsync (a file whose name survived but
  whose data never was synced comes back empty, as on ext4).

The kernel's page cache would hide the cut, so a cut is done unmounted: the
test kills every process using the mount (the power goes), unmounts, sends
"cut", and mounts again. `nothreads`: one request at a time, so the model
needs no locking (SQLite's and the queue's locks are the kernel's own: FUSE
handles fcntl and flock locks locally when the file system has none).

Run as `python -m tests.support.powercut_fs MOUNTPOINT`; commands on stdin,
one a line, each answered on stdout: `mount` (answered "mounted" once the
mount is up; "unmounted" follows when it is taken down from outside), `cut`,
`stats`, `quit`.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import mfusepy


@dataclass(eq=False)
class Node:
    mode: int
    data: bytearray = field(default_factory=bytearray)
    durable: bytes = b""
    entries: dict[str, Node] = field(default_factory=dict)
    durable_entries: dict[str, Node] = field(default_factory=dict)
    mtime: float = field(default_factory=time.time)
    rdev: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


class PowerCutFS(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True  # utimens times in nanoseconds

    def __init__(self) -> None:
        self.root = Node(stat.S_IFDIR | 0o755)
        self.handles: dict[int, Node] = {}
        self.next_fh = 1
        self.counts = {"fsync": 0, "fsyncdir": 0, "cuts": 0, "writes": 0}

    # -- the model -----------------------------------------------------------

    def cut(self) -> None:
        """Everything not durable is gone."""
        seen: set[int] = set()

        def revert(node: Node) -> None:
            if id(node) in seen:
                return
            seen.add(id(node))
            if node.is_dir:
                node.entries = dict(node.durable_entries)
                for child in node.entries.values():
                    revert(child)
            else:
                node.data = bytearray(node.durable)

        revert(self.root)
        self.handles.clear()
        self.counts["cuts"] += 1

    def _lookup(self, path: str) -> Node:
        node = self.root
        for part in path.strip("/").split("/"):
            if not part:
                continue
            if not node.is_dir or part not in node.entries:
                raise mfusepy.FuseOSError(errno.ENOENT)
            node = node.entries[part]
        return node

    def _parent(self, path: str) -> tuple[Node, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self._lookup(head or "/")
        if not parent.is_dir:
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        return parent, name

    def _node(self, path: str | None, fh: int | None) -> Node:
        if fh is not None and fh in self.handles:
            return self.handles[fh]
        if path is None:
            raise mfusepy.FuseOSError(errno.EBADF)
        return self._lookup(path)

    def _handle(self, node: Node) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = node
        return fh

    # -- operations ----------------------------------------------------------

    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        node = self._node(path, fh)
        size = 4096 if node.is_dir else len(node.data)
        return {
            "st_mode": node.mode,
            "st_nlink": 2 if node.is_dir else 1,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_blksize": 4096,
            "st_mtime": node.mtime,
            "st_ctime": node.mtime,
            "st_atime": node.mtime,
            "st_uid": os.getuid(),
            "st_gid": os.getgid(),
            "st_rdev": node.rdev,
        }

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *self._node(path, fh).entries]

    def opendir(self, path: str) -> int:
        node = self._lookup(path)
        if not node.is_dir:
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        return self._handle(node)

    def releasedir(self, path: str | None, fh: int) -> int:
        self.handles.pop(fh, None)
        return 0

    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        node = self._node(path, fh)
        node.durable_entries = dict(node.entries)
        self.counts["fsyncdir"] += 1
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        parent, name = self._parent(path)
        if name in parent.entries:
            raise mfusepy.FuseOSError(errno.EEXIST)
        parent.entries[name] = Node(stat.S_IFDIR | (mode & 0o7777))
        parent.mtime = time.time()
        return 0

    def mknod(self, path: str, mode: int, dev: int) -> int:
        parent, name = self._parent(path)
        if name in parent.entries:
            raise mfusepy.FuseOSError(errno.EEXIST)
        parent.entries[name] = Node(mode, rdev=dev)
        return 0

    def rmdir(self, path: str) -> int:
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            raise mfusepy.FuseOSError(errno.ENOENT)
        if node.entries:
            raise mfusepy.FuseOSError(errno.ENOTEMPTY)
        del parent.entries[name]
        return 0

    def unlink(self, path: str) -> int:
        parent, name = self._parent(path)
        if parent.entries.pop(name, None) is None:
            raise mfusepy.FuseOSError(errno.ENOENT)
        parent.mtime = time.time()
        return 0

    def rename(self, old: str, new: str) -> int:
        old_parent, old_name = self._parent(old)
        new_parent, new_name = self._parent(new)
        node = old_parent.entries.get(old_name)
        if node is None:
            raise mfusepy.FuseOSError(errno.ENOENT)
        target = new_parent.entries.get(new_name)
        if target is not None and target.is_dir and target.entries:
            raise mfusepy.FuseOSError(errno.ENOTEMPTY)
        del old_parent.entries[old_name]
        new_parent.entries[new_name] = node
        return 0

    def create(self, path: str, mode: int, flags: int = 0) -> int:
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            node = Node(stat.S_IFREG | (mode & 0o7777))
            parent.entries[name] = node
        elif flags & os.O_TRUNC:
            node.data = bytearray()
        return self._handle(node)

    def open(self, path: str, flags: int) -> int:
        node = self._lookup(path)
        if flags & os.O_TRUNC:
            node.data = bytearray()
        return self._handle(node)

    def release(self, path: str | None, fh: int) -> int:
        self.handles.pop(fh, None)
        return 0

    def flush(self, path: str | None, fh: int) -> int:
        return 0

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return bytes(self._node(path, fh).data[offset : offset + size])

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        node = self._node(path, fh)
        end = offset + len(data)
        if offset > len(node.data):
            node.data.extend(b"\0" * (offset - len(node.data)))
        node.data[offset:end] = data
        node.mtime = time.time()
        self.counts["writes"] += 1
        return len(data)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        node = self._node(path, fh)
        if length < len(node.data):
            del node.data[length:]
        else:
            node.data.extend(b"\0" * (length - len(node.data)))
        return 0

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        node = self._node(path, fh)
        node.durable = bytes(node.data)
        self.counts["fsync"] += 1
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        node = self._lookup(path)
        node.mtime = times[1] / 1e9 if times else time.time()
        return 0

    def chmod(self, path: str, mode: int) -> int:
        node = self._lookup(path)
        node.mode = (node.mode & ~0o7777) | (mode & 0o7777)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        return 0

    def access(self, path: str, amode: int) -> int:
        self._lookup(path)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        blocks = 1 << 22  # 16 GiB of 4 KiB blocks, all free: the RAM is the limit
        return {
            "f_bsize": 4096,
            "f_frsize": 4096,
            "f_blocks": blocks,
            "f_bfree": blocks,
            "f_bavail": blocks,
            "f_files": 1 << 20,
            "f_ffree": 1 << 20,
            "f_namemax": 255,
        }


def main() -> None:
    mountpoint = sys.argv[1]
    fs = PowerCutFS()
    mounts: queue.Queue[str] = queue.Queue()
    mounted = threading.Event()

    def reply(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def control() -> None:
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "mount":
                mounts.put("mount")
            elif cmd == "cut":
                if mounted.is_set():
                    reply("error: cut while mounted")
                    continue
                fs.cut()
                reply("cut")
            elif cmd == "stats":
                reply(json.dumps(fs.counts))
            elif cmd == "quit":
                break
        mounts.put("quit")

    threading.Thread(target=control, daemon=True).start()
    while mounts.get() == "mount":
        mounted.set()
        threading.Thread(target=_announce, args=(mountpoint, reply), daemon=True).start()
        mfusepy.FUSE(
            fs,
            mountpoint,
            foreground=True,
            nothreads=True,
            hard_remove=True,
            fsname="powercut",
        )
        mounted.clear()
        reply("unmounted")


def _announce(mountpoint: str, reply: Any) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if os.path.ismount(mountpoint):
            reply("mounted")
            return
        time.sleep(0.01)
    reply("error: mount did not come up")


if __name__ == "__main__":
    main()
