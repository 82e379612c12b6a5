"""The Linux kernel's own NFS client, booted under qemu, for end-to-end tests.

This machine's kernel has no NFS client, but Debian's kernel has one as
modules. `build_image()` makes, once (cached by kernel version), a bootable
pair from Debian packages without touching the host's own kernel:

* the kernel: `linux-image-amd64` fetched with `apt-get download` and
  unpacked with `dpkg-deb -x`; the ELF `vmlinux` is cut out of the bzImage
  (its xz payload, Python's `lzma`) so that qemu boots it through its PVH
  entry point and the guest does not spend seconds decompressing itself;
* an initramfs: static busybox, the NFS client modules in dependency order,
  the user-space half of a real Linux NFS client from Debian's nfs-common,
  rpcbind and acl packages (`mount.nfs`, `rpc.statd`, `rpcbind`, `setfacl`,
  `getfacl`, with the shared libraries they load, taken from this Debian
  host) and an `/init` script, written as a newc cpio by Python (so
  `/dev/console` needs no root mknod). So a mount line typed by a user works
  in the guest as it is.

`Guest.run(script, mounts=[mount command lines])` appends a second small
cpio with that run's mounts and script (the kernel unpacks concatenated archives), boots under
TCG (KVM hung here), and returns the script's exit code and the console. The
guest reaches the host's loopback services at 10.0.2.2 (qemu's user-mode
network); they see its connections come from 127.0.0.1.

Library code for tests only; no pytest in here.
"""

from __future__ import annotations

import dataclasses
import lzma
import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

__all__ = ["KernelImage", "Guest", "GuestResult", "build_image", "mount_line", "GuestUnavailable",
           "HOST_FROM_GUEST"]

#: The host's loopback as the guest sees it (qemu user-mode networking).
HOST_FROM_GUEST = "10.0.2.2"

# insmod order: each module after the ones its .modinfo `depends=` names.
_MODULES = (
    "net/sunrpc/sunrpc.ko", "fs/nfs_common/grace.ko", "fs/lockd/lockd.ko",
    "fs/nfs_common/nfs_acl.ko", "net/sunrpc/auth_gss/auth_rpcgss.ko", "fs/netfs/netfs.ko",
    "fs/fscache/fscache.ko", "fs/nfs/nfs.ko", "fs/nfs/nfsv3.ko", "net/dns_resolver/dns_resolver.ko",
    "fs/nfs/nfsv4.ko", "drivers/virtio/virtio_ring.ko", "drivers/virtio/virtio.ko",
    "net/core/failover.ko", "drivers/net/net_failover.ko", "drivers/net/virtio_net.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko", "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci.ko",
)

# Debian packages whose programs the guest runs, and those programs.
_USERLAND_PACKAGES = ("nfs-common", "rpcbind", "libtirpc3", "libtirpc-common", "libnfsidmap1",
                      "acl", "libacl1", "util-linux")
# flock(1): busybox has none; on NFSv3 the kernel turns its flock(2) into an NLM lock.
_USERLAND_PROGRAMS = ("sbin/mount.nfs", "sbin/rpc.statd", "sbin/rpcbind", "sbin/sm-notify",
                      "usr/sbin/rpcinfo", "bin/setfacl", "bin/getfacl", "usr/bin/flock")
_USERLAND_LINKS = {"sbin/mount.nfs4": "mount.nfs", "sbin/umount.nfs": "mount.nfs",
                   "sbin/umount.nfs4": "mount.nfs"}
_USERLAND_FILES = ("etc/netconfig",)
_ETC = {
    "etc/hosts": "127.0.0.1 localhost\n",
    # rpcbind exits silently (its log is syslog) when its user is missing.
    "etc/passwd": ("root:x:0:0:root:/:/bin/sh\nstatd:x:104:65534::/var/lib/nfs:/bin/false\n"
                   "_rpc:x:105:65534::/run/rpcbind:/bin/false\n"),
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/services": "sunrpc 111/tcp portmapper\nsunrpc 111/udp portmapper\nnfs 2049/tcp\n",
    "etc/protocols": "ip 0 IP\ntcp 6 TCP\nudp 17 UDP\n",
    "etc/fstab": "",
}

_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
ln -s /proc/mounts /etc/mtab
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp
for m in $(cat /modules.order); do insmod /modules/$m || echo "nfsj-guest: insmod $m failed"; done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
echo "nfsj-guest: up"
sh -e /run/mounts.sh
rc=$?
if [ $rc -eq 0 ]; then
    cd /
    sh -e /run/script.sh
    rc=$?
    sync
    for m in $(tac /run/mountpoints 2>/dev/null || cat /run/mountpoints); do umount $m || rc=99; done
fi
echo "nfsj-guest: exit $rc"
poweroff -f
"""

_EXIT = re.compile(r"nfsj-guest: exit (\d+)")

#: Directories of the base initramfs.
_DIRS = ("bin", "dev", "proc", "sys", "tmp", "run", "run/rpcbind", "modules", "mnt", "etc", "var", "var/lib",
         "var/lib/nfs", "var/lib/nfs/sm", "var/lib/nfs/sm.bak")

#: Bump when the initramfs's contents change, so that a cached one is rebuilt.
_INITRD_FORMAT = 4


class GuestUnavailable(RuntimeError):
    """The kernel, busybox or qemu could not be found or built (says how to install them)."""


@dataclasses.dataclass(frozen=True, slots=True)
class KernelImage:
    """A bootable kernel and its base initramfs."""

    version: str
    vmlinux: Path
    initrd: Path


def mount_line(port: int, mountpoint: str = "/mnt", *, options: str = "vers=3,proto=tcp,nolock",
               mount_port: int | None = None, export: str = "/export") -> str:
    """The mount command a user types for a server on the host (the README's form).

    `mount_port` None: MOUNT is served on `port` too, as the proxy does.
    """
    return (f"mount -t nfs -o {options},port={port},mountport={mount_port or port} "
            f"{HOST_FROM_GUEST}:{export} {mountpoint}")


@dataclasses.dataclass(frozen=True, slots=True)
class GuestResult:
    exit_code: int | None  # None: the guest never reported (hung, panicked, timed out)
    console: str


# -- building ------------------------------------------------------------------------------


def _run(argv: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise GuestUnavailable(f"{' '.join(argv)} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def _kernel_package() -> str:
    out = _run(["apt-cache", "depends", "linux-image-amd64"])
    m = re.search(r"Depends: (linux-image-[0-9][^\s]*-amd64)", out)
    if not m:
        raise GuestUnavailable("apt-cache knows no linux-image-amd64 (run apt-get update)")
    return m.group(1)


def _unpack(packages: tuple[str, ...], into: Path) -> Path:
    """`apt-get download` the packages (not installed on the host) and unpack them into one root."""
    into.mkdir(parents=True, exist_ok=True)
    _run(["apt-get", "download", *packages], cwd=into)
    root = into / "root"
    for deb in into.glob("*.deb"):
        _run(["dpkg-deb", "-x", str(deb), str(root)])
        deb.unlink()
    return root


def _vmlinux_from_bzimage(bzimage: bytes) -> bytes:
    start = bzimage.find(b"\xfd7zXZ\x00")
    if start < 0:
        raise GuestUnavailable("the kernel image holds no xz payload")
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(bzimage[start:])


class _Cpio:
    """A newc ("070701") cpio archive, written without root."""

    def __init__(self) -> None:
        self._out = bytearray()
        self._ino = 1

    def _add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
        self._ino += 1
        self._out += b"070701" + b"".join(b"%08X" % f for f in fields)
        self._out += name.encode() + b"\0"
        self._out += b"\0" * (-len(self._out) % 4)
        self._out += data
        self._out += b"\0" * (-len(self._out) % 4)

    def dir(self, name: str) -> None:
        self._add(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._add(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._add(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._add(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._add("TRAILER!!!", 0)
        return bytes(self._out)


def _busybox() -> bytes:
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(path):
            return Path(path).read_bytes()
    raise GuestUnavailable("no static busybox: apt-get install busybox-static")


def _base_initrd(modules_root: Path, userland_root: Path) -> bytes:
    cpio = _Cpio()
    for d in _DIRS:
        cpio.dir(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.file("bin/busybox", _busybox(), 0o755)
    for name, text in _ETC.items():
        cpio.file(name, text.encode())
    cpio.file("init", _INIT.encode(), 0o755)
    names = []
    for rel in _MODULES:
        path = modules_root / rel
        if not path.exists():
            raise GuestUnavailable(f"the kernel package has no {rel}")
        names.append(path.name)
        cpio.file(f"modules/{path.name}", path.read_bytes())
    cpio.file("modules.order", "\n".join(names).encode() + b"\n")
    _add_userland(cpio, userland_root)
    return cpio.finish()


def _add_userland(cpio: _Cpio, root: Path) -> None:
    """nfs-common's programs from `root`, and every shared library they load."""
    libdirs = [root / "lib" / "x86_64-linux-gnu", root / "usr" / "lib" / "x86_64-linux-gnu"]
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(map(str, libdirs)))
    libraries: dict[str, Path] = {}
    for rel in _USERLAND_PROGRAMS:
        program = root / rel
        out = subprocess.run(["ldd", str(program)], env=env, capture_output=True, text=True).stdout
        for m in re.finditer(r"(?:=> )?(/\S+) \(0x", out):
            found = Path(m.group(1))
            # A library unpacked from a package goes where the guest's loader looks.
            where = (f"lib/x86_64-linux-gnu/{found.name}" if root in found.parents
                     else str(found).lstrip("/"))
            libraries[where] = found
    made = {".", *_DIRS}
    for rel in sorted({*_USERLAND_PROGRAMS, *_USERLAND_LINKS, *_USERLAND_FILES, *libraries}):
        for parent in reversed(Path(rel).parents):
            if str(parent) not in made:
                cpio.dir(str(parent))
                made.add(str(parent))
    for rel in _USERLAND_PROGRAMS:
        cpio.file(rel, (root / rel).read_bytes(), 0o755)
    for rel, target in _USERLAND_LINKS.items():
        cpio.symlink(rel, target)
    for rel in _USERLAND_FILES:
        cpio.file(rel, (root / rel).read_bytes())
    for where, found in sorted(libraries.items()):
        cpio.file(where, found.read_bytes(), 0o755)


def default_cache_dir() -> Path:
    return Path(os.environ.get("NFSJ_KERNEL_CACHE", Path.home() / ".cache" / "nfsj-kernel"))


def build_image(cache_dir: Path | None = None) -> KernelImage:
    """The kernel and base initramfs, built once per kernel version and cached."""
    if shutil.which("qemu-system-x86_64") is None:
        raise GuestUnavailable("qemu-system-x86_64 not found: "
                               "apt-get install --no-install-recommends qemu-system-x86")
    package = _kernel_package()
    version = package.removeprefix("linux-image-")
    home = (cache_dir or default_cache_dir()) / version
    image = KernelImage(version, home / "vmlinux", home / f"initrd-{_INITRD_FORMAT}.cpio")
    if image.vmlinux.exists() and image.initrd.exists():
        return image
    with tempfile.TemporaryDirectory() as work:
        root = _unpack((package,), Path(work) / "kernel")
        userland = _unpack(_USERLAND_PACKAGES, Path(work) / "userland")
        bzimage = (root / "boot" / f"vmlinuz-{version}").read_bytes()
        modules = root / "lib" / "modules" / version / "kernel"
        home.mkdir(parents=True, exist_ok=True)
        _write_atomic(image.initrd, _base_initrd(modules, userland))
        _write_atomic(image.vmlinux, _vmlinux_from_bzimage(bzimage))
    return image


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# -- running -------------------------------------------------------------------------------


class Guest:
    """Boots `image` to run one script per call; each run is a fresh boot."""

    def __init__(self, image: KernelImage, workdir: Path, *, memory_mib: int = 512,
                 launcher: tuple[str, ...] = (), netdev: str = "user,id=n0", mac: str | None = None):
        self.image = image
        self.workdir = Path(workdir)
        self.memory_mib = memory_mib
        self.launcher = tuple(launcher)  # a command prefix for qemu (e.g. into a network namespace)
        # qemu's -netdev (id n0). The default, user-mode NAT, lets the guest call out
        # but not be called; a tap device (on a bridge at 10.0.2.2) lets servers call back.
        self.netdev = netdev
        self.mac = mac
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._runs = 0

    def run(self, script: str, mounts: list[str] = (), *, timeout_s: float = 300.0,
            before_mount: str = "") -> GuestResult:
        """Run `before_mount` (shell lines), each mount command line (its mount point is
        made first), then `script` with `sh -e`, then unmount; return the script's exit
        code and the console."""
        self._runs += 1
        initrd = self.workdir / f"initrd-{self._runs}.cpio"
        mountpoints = [line.split()[-1] for line in mounts]
        extra = _Cpio()
        extra.file("run/mounts.sh", (before_mount + "\n" + "".join(
            f"mkdir -p {mp}\n{line}\n" for mp, line in zip(mountpoints, mounts))).encode())
        extra.file("run/mountpoints", "\n".join(mountpoints).encode() + b"\n")
        extra.file("run/script.sh", script.encode())
        with open(initrd, "wb") as out:
            out.write(self.image.initrd.read_bytes())
            out.write(extra.finish())
        argv = [*self.launcher, "qemu-system-x86_64", "-accel", "tcg", "-m", str(self.memory_mib), "-smp", "1",
                "-nographic", "-no-reboot", "-kernel", str(self.image.vmlinux),
                "-initrd", str(initrd), "-append", "console=ttyS0 panic=-1 quiet",
                "-netdev", self.netdev,
                "-device", "virtio-net-pci,netdev=n0" + (f",mac={self.mac}" if self.mac else "")]
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=timeout_s)
            console = done.stdout.decode(errors="replace")
        except subprocess.TimeoutExpired as e:
            console = (e.stdout or b"").decode(errors="replace") + "\n[timed out]"
        finally:
            initrd.unlink(missing_ok=True)
        (self.workdir / f"console-{self._runs}.txt").write_text(console)
        m = _EXIT.search(console)
        return GuestResult(int(m.group(1)) if m else None, console)


if __name__ == "__main__":
    # `.ci/run` builds the image before the tests, so that a missing package fails early and plainly.
    built = build_image()
    print(f"kernel NFS client test bed: {built.version} ({built.vmlinux}, {built.initrd})")
