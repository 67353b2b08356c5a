#!/usr/bin/env python3
"""Can this process open a userfaultfd? The precondition of QEMU 7.2's postcopy qtests
(tests/qtest/migration-test.c registers them only when its ufd_version_check passes) and of
postcopy itself. Does what that check does: the userfaultfd syscall with O_CLOEXEC, then
UFFDIO_API, then requires UFFDIO_REGISTER and UFFDIO_UNREGISTER among the ioctls offered.
Exit 0 and "ok ..." when it can; exit 1 and the reason otherwise.
"""

import ctypes
import fcntl
import os
import platform
import struct
import sys

NR_USERFAULTFD = {"x86_64": 323, "aarch64": 282}
UFFD_API = 0xAA
UFFDIO_API = 0xC018AA3F  # _IOWR(0xAA, 0x3F, struct uffdio_api), 24 bytes
REGISTER_BITS = (1 << 0) | (1 << 1)  # _UFFDIO_REGISTER, _UFFDIO_UNREGISTER


def main():
    nr = NR_USERFAULTFD.get(platform.machine())
    if nr is None:
        print("no userfaultfd syscall number known for %s" % platform.machine())
        return 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(nr), ctypes.c_int(os.O_CLOEXEC))
    if fd < 0:
        e = ctypes.get_errno()
        print("userfaultfd(O_CLOEXEC) failed: %s (errno %d)" % (os.strerror(e), e))
        return 1
    try:
        buf = bytearray(struct.pack("QQQ", UFFD_API, 0, 0))
        try:
            fcntl.ioctl(fd, UFFDIO_API, buf, True)
        except OSError as e:
            print("UFFDIO_API failed: %s" % e)
            return 1
        _, features, ioctls = struct.unpack("QQQ", bytes(buf))
        if ioctls & REGISTER_BITS != REGISTER_BITS:
            print("UFFDIO_REGISTER/UNREGISTER not offered (ioctls 0x%x)" % ioctls)
            return 1
        print("ok: userfaultfd opened (features 0x%x, ioctls 0x%x)" % (features, ioctls))
        return 0
    finally:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
