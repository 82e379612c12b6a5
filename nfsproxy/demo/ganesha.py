"""Run nfs-ganesha on loopback as a local NAS (end-to-end tests, `nfsj up` demos).

Library code only: no pytest in here. The facts it relies on were measured on
Debian 12 with ganesha 4.3 (measured here):

* ganesha registers with rpcbind at start-up and exits ("Cannot register NFS
  V3 on TCP") without one. We start `rpcbind -f` only when `rpcinfo -p
  127.0.0.1` fails, remember that we did, and never stop an rpcbind that we
  did not start.
* MOUNT must have its own port; NFSv3 mounts name the export's Pseudo path
  (`mount_path_pseudo = true`, `Pseudo = /export`).
* `Graceless = true` with a private `RecoveryRoot` skips the grace period.
* The server is ready when its log says `NFS SERVER INITIALIZED`.

Every instance registers itself with rpcbind and replaces the entries of the
one before, so clients must name both ports explicitly: `url()` does.

Usage::

    with start_ganesha(export_dir, workdir) as nas:
        client = nfs_rs.Client.connect(nas.url())
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Final

__all__ = [
    "GaneshaError", "GaneshaNotInstalledError", "Ganesha", "GaneshaInstance",
    "start_ganesha", "find_ganesha", "ensure_rpcbind", "rpcbind_running",
    "stop_rpcbind_if_started", "READY_MARKER", "EXPORT_PATH",
]

READY_MARKER: Final = "NFS SERVER INITIALIZED"
EXPORT_PATH: Final = "/export"
INSTALL_HINT: Final = "apt-get install nfs-ganesha nfs-ganesha-vfs"
_SBIN_DIRS: Final = ("/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin", "/usr/local/sbin")
# Log lines that mean "the port we picked was taken between picking and binding".
_PORT_TAKEN_MARKERS: Final = ("Address already in use", "Cannot bind")


class GaneshaError(RuntimeError):
    """ganesha (or the rpcbind it needs) could not be started or stopped."""


class GaneshaNotInstalledError(GaneshaError):
    """The ganesha.nfsd binary or its VFS backend is not installed."""


def _which(name: str) -> str | None:
    # /usr/sbin is not on every PATH (e.g. a non-login shell of a normal user).
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN_DIRS:
        candidate = os.path.join(d, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def find_ganesha() -> str:
    """Path of ganesha.nfsd, or GaneshaNotInstalledError telling how to install it."""
    path = _which("ganesha.nfsd")
    if path is None:
        raise GaneshaNotInstalledError(
            f"ganesha.nfsd not found; install it with `{INSTALL_HINT}`")
    return path


def _check_vfs_fsal() -> None:
    """FSAL VFS ships in a separate Debian package; say so instead of a log line."""
    roots = ("/usr/lib/x86_64-linux-gnu/ganesha", "/usr/lib/aarch64-linux-gnu/ganesha",
             "/usr/lib64/ganesha", "/usr/lib/ganesha", "/usr/local/lib/ganesha")
    existing = [r for r in roots if os.path.isdir(r)]
    if existing and not any(os.path.exists(os.path.join(r, "libfsalvfs.so")) for r in existing):
        raise GaneshaNotInstalledError(
            f"ganesha's VFS backend (libfsalvfs.so) not found in {', '.join(existing)}; "
            f"install it with `{INSTALL_HINT}`")


# --------------------------------------------------------------------------
# rpcbind

_rpcbind_lock = threading.Lock()
_rpcbind_started: subprocess.Popen | None = None


def rpcbind_running(timeout_s: float = 5.0) -> bool:
    """True when `rpcinfo -p 127.0.0.1` answers."""
    rpcinfo = _which("rpcinfo")
    if rpcinfo is None:
        raise GaneshaNotInstalledError(
            "rpcinfo not found; install it with `apt-get install rpcbind`")
    try:
        done = subprocess.run([rpcinfo, "-p", "127.0.0.1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def ensure_rpcbind(log_dir: Path | None = None, timeout_s: float = 10.0) -> bool:
    """Make sure an rpcbind answers on 127.0.0.1; return True if this call started it.

    `rpcbind -f -h 127.0.0.1` crashes on Debian 12 ("double free"), so the
    started one listens on every interface, as the packaged service does.
    """
    global _rpcbind_started
    with _rpcbind_lock:
        if rpcbind_running():
            return False
        rpcbind = _which("rpcbind")
        if rpcbind is None:
            raise GaneshaNotInstalledError("rpcbind is not running and not installed; "
                                           "install it with `apt-get install rpcbind`")
        out = open(log_dir / "rpcbind.out", "ab") if log_dir is not None else subprocess.DEVNULL
        try:
            # Its own session: a Ctrl-C meant for the caller must not take it down
            # under a ganesha that still has to unregister.
            proc = subprocess.Popen([rpcbind, "-f"], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if rpcbind_running():
                if proc.poll() is None:
                    _rpcbind_started = proc
                    return True
                # Another process won the race for port 111; theirs serves us.
                return False
            if proc.poll() is not None and rpcbind_running():
                return False
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise GaneshaError(f"started `{rpcbind} -f` but `rpcinfo -p 127.0.0.1` still fails "
                           f"after {timeout_s:.0f}s (exit status {proc.returncode})")


def stop_rpcbind_if_started(timeout_s: float = 5.0) -> bool:
    """Stop the rpcbind this process started, if any; return True if one was stopped.

    Nothing calls this implicitly: another ganesha (in this process or another)
    may need rpcbind to register or unregister, so it is the caller's decision.
    """
    global _rpcbind_started
    with _rpcbind_lock:
        proc, _rpcbind_started = _rpcbind_started, None
        if proc is None or proc.poll() is not None:
            return False
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return True


# --------------------------------------------------------------------------
# ganesha


def _free_ports(bind: str, count: int) -> list[int]:
    """`count` distinct free TCP ports on `bind` (held open together, so distinct)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((bind, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


@dataclasses.dataclass(frozen=True, slots=True)
class Ganesha:
    """How to run one ganesha: a VFS export of `export_dir`, files under `workdir`.

    Ports left as None are picked free at `start()`.
    """

    export_dir: Path
    workdir: Path
    nfs_port: int | None = None
    mount_port: int | None = None
    bind: str = "127.0.0.1"
    export_id: int = 1
    lease_lifetime_s: int = 20
    start_timeout_s: float = 30.0
    #: Serve NFSACL v3 (POSIX ACLs, program 100227) on the NFS port.
    nfsacl: bool = False
    #: Serve NLM (v3 locking); it needs an rpc.statd registered with the host's rpcbind.
    nlm: bool = False
    #: A command prefix to run ganesha under (e.g. `nsenter` into another network
    #: namespace, which brings its own rpcbind: none is started here then).
    launcher: tuple[str, ...] = ()

    def config_text(self, nfs_port: int, mount_port: int) -> str:
        """The ganesha.conf for the given ports."""
        if nfs_port == mount_port:
            # Ganesha accepts it but then reports MOUNT "registered but unavailable".
            raise ValueError("MOUNT needs its own port, distinct from the NFS port")
        recovery = Path(self.workdir).resolve() / "recovery"
        export_dir = Path(self.export_dir).resolve()
        for path in (recovery, export_dir):
            if any(c in str(path) for c in '"\n\\'):
                raise ValueError(f"ganesha's config cannot quote the path {str(path)!r}")
        return f"""\
NFS_CORE_PARAM {{
    NFS_Port = {nfs_port};
    MNT_Port = {mount_port};
    Bind_addr = {self.bind};
    Protocols = 3, 4;
    Enable_NLM = {"true" if self.nlm else "false"};
    Enable_RQUOTA = false;
    Enable_UDP = false;
{"    Enable_NFSACL = true;" + chr(10) if self.nfsacl else ""}    mount_path_pseudo = true;
}}

NFSV4 {{
    Graceless = true;
    RecoveryBackend = fs;
    RecoveryRoot = "{recovery}";
    Lease_Lifetime = {self.lease_lifetime_s};
}}

EXPORT {{
    Export_Id = {self.export_id};
    Path = "{export_dir}";
    Pseudo = {EXPORT_PATH};
    Access_Type = RW;
    Squash = No_Root_Squash;
    Protocols = 3, 4;
    Transports = TCP;
    SecType = sys;
    FSAL {{
        Name = VFS;
    }}
}}
"""

    def start(self) -> GaneshaInstance:
        """Start ganesha and wait until it serves; GaneshaError (with the log tail) if not."""
        binary = find_ganesha()
        _check_vfs_fsal()
        export_dir = Path(self.export_dir).resolve()
        workdir = Path(self.workdir).resolve()
        export_dir.mkdir(parents=True, exist_ok=True)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "recovery").mkdir(exist_ok=True)
        started_rpcbind = False if self.launcher else ensure_rpcbind(workdir)

        pick = self.nfs_port is None or self.mount_port is None
        # Another process may take a picked port before ganesha binds it: pick again.
        attempts = 3 if self.nfs_port is None and self.mount_port is None else 1
        for attempt in range(1, attempts + 1):
            nfs_port, mount_port = self.nfs_port, self.mount_port
            if pick:
                free = [p for p in _free_ports(self.bind, 3) if p not in (nfs_port, mount_port)]
                nfs_port = nfs_port or free.pop(0)
                mount_port = mount_port or free.pop(0)
            try:
                return self._launch(binary, export_dir, workdir, nfs_port, mount_port,
                                    started_rpcbind, attempt)
            except _PortTaken as e:
                if attempt == attempts:
                    raise GaneshaError(
                        f"ganesha could not bind port {nfs_port} or {mount_port} "
                        f"({attempts} attempt(s)):\n{e}") from None
        raise AssertionError("unreachable")

    def _launch(self, binary: str, export_dir: Path, workdir: Path, nfs_port: int,
                mount_port: int, started_rpcbind: bool, attempt: int) -> GaneshaInstance:
        suffix = "" if attempt == 1 else f".{attempt}"
        conf = workdir / f"ganesha{suffix}.conf"
        log = workdir / f"ganesha{suffix}.log"
        pidfile = workdir / f"ganesha{suffix}.pid"
        out_path = workdir / f"ganesha{suffix}.out"
        conf.write_text(self.config_text(nfs_port, mount_port))
        log.unlink(missing_ok=True)
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(
                [*self.launcher, binary, "-F", "-f", str(conf), "-L", str(log), "-p", str(pidfile)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=workdir, start_new_session=True)
        inst = GaneshaInstance(
            export_dir=export_dir, workdir=workdir, nfs_port=nfs_port, mount_port=mount_port,
            bind=self.bind, process=proc, conf_path=conf, log_path=log, pid_path=pidfile,
            out_path=out_path, started_rpcbind=started_rpcbind)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            text = _read(log)
            if READY_MARKER in text:
                return inst
            # A FATAL line does not always make ganesha exit promptly.
            fatal = ":FATAL :" in text
            if fatal:
                inst.stop(timeout_s=2.0)
            if fatal or proc.poll() is not None:
                tail = inst.log_tail()
                if any(m in tail for m in _PORT_TAKEN_MARKERS):
                    raise _PortTaken(tail)
                raise GaneshaError(
                    f"ganesha failed to start (exit status {proc.returncode}) "
                    f"(config {conf}):\n{tail}")
            if time.monotonic() > deadline:
                tail = inst.log_tail()
                inst.stop()
                raise GaneshaError(
                    f"ganesha did not log {READY_MARKER!r} within {self.start_timeout_s:.0f}s "
                    f"(config {conf}):\n{tail}")
            time.sleep(0.02)


class _PortTaken(Exception):
    pass


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


@dataclasses.dataclass(eq=False, slots=True)
class GaneshaInstance:
    """A running ganesha. `export_dir` is the local directory it serves as `/export`."""

    export_dir: Path
    workdir: Path
    nfs_port: int
    mount_port: int
    bind: str
    process: subprocess.Popen
    conf_path: Path
    log_path: Path
    pid_path: Path
    out_path: Path
    started_rpcbind: bool
    export_path: str = EXPORT_PATH

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def host(self) -> str:
        """The address clients should use (loopback when bound to every interface)."""
        return "127.0.0.1" if self.bind in ("", "0.0.0.0", "::") else self.bind

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def url(self, version: int | str = 3, path: str = "") -> str:
        """`nfs://HOST/export[/path]?version=V&nfsport=P&mountport=M` (nfs-rs and libnfs)."""
        sub = "/" + path.lstrip("/") if path else ""
        return (f"nfs://{self.host}{self.export_path}{sub}?version={version}"
                f"&nfsport={self.nfs_port}&mountport={self.mount_port}")

    def log_tail(self, lines: int = 40) -> str:
        """The end of ganesha's log and of its stdout/stderr, for error messages."""
        out = _read(self.out_path).strip()
        text = _tail(self.log_path, lines)
        if out:
            text += "\n--- stdout/stderr ---\n" + "\n".join(out.splitlines()[-lines:])
        return text

    def stop(self, timeout_s: float = 10.0) -> int:
        """Stop ganesha by its PID (SIGTERM, then SIGKILL after `timeout_s`) and reap it.

        Returns its exit status. Idempotent. rpcbind is left alone (see
        `stop_rpcbind_if_started`).
        """
        proc = self.process
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def __enter__(self) -> GaneshaInstance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_ganesha(export_dir: str | os.PathLike[str], workdir: str | os.PathLike[str], *,
                  nfs_port: int | None = None, mount_port: int | None = None,
                  bind: str = "127.0.0.1", start_timeout_s: float = 30.0,
                  nfsacl: bool = False) -> GaneshaInstance:
    """Start ganesha serving `export_dir` as `/export`; its files go to `workdir`.

    `nfsacl`: also serve NFSACL v3 (POSIX ACLs) on the NFS port."""
    return Ganesha(Path(export_dir), Path(workdir), nfs_port, mount_port, bind,
                   start_timeout_s=start_timeout_s, nfsacl=nfsacl).start()
