"""Which filesystem a watched folder is on, and so whether it must be polled (``watch[].polling: auto``).

inotify reports only what this kernel does: files written by other NFS or SMB clients, by the server
behind an sshfs or 9p mount, or by other nodes of a cluster filesystem never raise an event here, so
such folders are polled. The filesystem types come from ``/proc/self/mountinfo`` (proc(5)), one line per
mount::

    36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    (1)(2) (3)  (4)    (5)        (6)        (7)    (8) (9)    (10)      (11)

mount id, parent id, device, root, mount point, options, zero or more optional fields ended by a lone
``-``, then the filesystem type, the source and the superblock options. Paths escape space, tab,
newline and backslash as octal (``\\040``). The mount of a path is the one whose mount point is the
longest prefix of it (on a tie, the later line: a mount stacked on the same point hides the earlier).

**Mounts below a watched root** (``recursive: true``) are looked at too, and one whose choice differs
from the folder around it gets its own observer (a :class:`Choice`). The two kinds cannot simply share
a tree, and each side is pruned the way the observer allows:

* a polled mount below an inotify root: watchdog's inotify emitter walks the whole tree when it starts
  (``os.walk``) and has no public way to skip a folder, so its watches reach into the share; the
  root's events from there are dropped (:meth:`Choice.covers`), so the file is offered once, by the
  polling observer, with the share's rules for trusting mtimes. Those events could only be writes made
  on this machine, which polling sees too.
* an inotify mount below a polled root (a local disk mounted inside a share): the polling observer
  lists folders through a function we give it, which skips the mount point, so it is not polled twice.

Mounts are read once when watching starts: a share mounted later below a watched folder is watched as
the folder around it was, until a restart.

``RFWATCH_TEST_MOUNTINFO``, the path of a file to read instead of ``/proc/self/mountinfo``, exists only for
tests (a real NFS mount cannot be made without root); nothing else should set it.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import field
from pathlib import Path

from rfwatch.record import record

__all__ = ["Mount", "MountTable", "Choice", "WatchPlan", "parse_mountinfo", "is_network_fs", "plan_watch"]

log = logging.getLogger("rfwatch.service.mounts")

MOUNTINFO = "/proc/self/mountinfo"
#: Test-only: a file read instead of MOUNTINFO (see the module docstring).
MOUNTINFO_ENV = "RFWATCH_TEST_MOUNTINFO"
#: How often a polled folder is listed, in seconds.
POLL_INTERVAL = 1.0

#: Filesystems whose files change without this kernel knowing: network, cluster and host-shared ones.
NETWORK_FS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "9p",  # WSL2's Windows drives, QEMU/virtme shares
        "virtiofs",  # a VM's shared folder: the host writes it
        "vboxsf",  # VirtualBox shared folders
        "vmhgfs",
        "ceph",
        "glusterfs",
        "afs",
        "openafs",
        "coda",
        "davfs",
        "lustre",
        "gpfs",
        "beegfs",
        "orangefs",
        "pvfs2",
        "ocfs2",  # cluster filesystems on shared disks: other nodes write them
        "gfs2",
        "autofs",  # an automount point not mounted yet: what will be there is unknown, polling always works
        "fuse",  # FUSE without a subtype (see below)
    }
)


def is_network_fs(fstype: str) -> bool:
    """Whether files on ``fstype`` may change without this kernel seeing it (so inotify would miss them).

    Every ``fuse.*`` counts (sshfs, rclone, s3fs, gcsfuse, mergerfs...): the process behind a FUSE mount
    decides what its files hold. ``fuseblk`` does not: it is a disk filesystem (ntfs-3g, exfat) run by
    FUSE, written only through this machine. Anything else (ext4, xfs, btrfs, zfs, tmpfs, overlay...)
    is local.
    """
    kind = fstype.lower()
    return kind in NETWORK_FS or kind.startswith("fuse.")


_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(text: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), text)


@record
class Mount:
    mount_point: str
    fstype: str
    source: str = ""
    mount_id: int = 0

    @property
    def network(self) -> bool:
        return is_network_fs(self.fstype)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts in ``text`` (the contents of a mountinfo file), in its order; malformed lines are skipped."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)  # optional fields (shared:N, master:N ...) end at a lone "-"
            mount_point, fstype = fields[4], fields[sep + 1]
            source = fields[sep + 2] if len(fields) > sep + 2 else ""
            mount_id = int(fields[0])
        except (ValueError, IndexError):
            continue
        mounts.append(Mount(_unescape(mount_point), _unescape(fstype), _unescape(source), mount_id))
    return mounts


def _under(path: str, mount_point: str) -> bool:
    """``path`` is ``mount_point`` or inside it (whole components: /mnt/cam is not inside /mnt/ca)."""
    if mount_point == "/":
        return path.startswith("/")
    return path == mount_point or path.startswith(mount_point + "/")


@record
class MountTable:
    mounts: tuple[Mount, ...] = ()

    @classmethod
    def from_text(cls, text: str) -> MountTable:
        return cls(tuple(parse_mountinfo(text)))

    @classmethod
    def current(cls) -> MountTable:
        """This process's mounts; empty (every folder then counts as local) where they cannot be read."""
        path = os.environ.get(MOUNTINFO_ENV) or MOUNTINFO
        try:
            with open(path, "rb") as f:
                return cls.from_text(os.fsdecode(f.read()))
        except OSError as exc:
            log.debug("cannot read %s (%s): every watched folder counts as local", path, exc)
            return cls()

    def find(self, path: str) -> Mount | None:
        """The mount ``path`` is on: the longest mount point that contains it (the later one on a tie)."""
        best: Mount | None = None
        for mount in self.mounts:
            if _under(path, mount.mount_point) and (best is None or len(mount.mount_point) >= len(best.mount_point)):
                best = mount
        return best

    def below(self, path: str) -> list[Mount]:
        """The mounts strictly inside ``path``, outermost first, one per mount point (the visible one)."""
        visible: dict[str, Mount] = {}
        for mount in self.mounts:
            if mount.mount_point != path and _under(mount.mount_point, path):
                visible[mount.mount_point] = mount  # later lines hide earlier ones on the same point
        return sorted(visible.values(), key=lambda m: (m.mount_point.count("/"), m.mount_point))


@record
class Choice:
    """One observer's share of a watched root: the root itself, or a mount below it watched the other way."""

    #: Where to watch, spelled below the configured root (so event paths match the root's filters).
    path: Path
    fstype: str
    polling: bool
    #: The config said true or false (else: auto, from the filesystem).
    forced: bool = False
    #: A mount below the root rather than the root.
    submount: bool = False
    #: Mount points below ``path`` that another Choice watches.
    excluded: tuple[Path, ...] = field(default=())

    def covers(self, path: Path) -> bool:
        """Whether a file at ``path`` is this observer's to report (not inside an excluded mount)."""
        return not any(path == ex or ex in path.parents for ex in self.excluded)

    def describe(self) -> str:
        """E.g. ``nfs4: polling every 1s`` or ``ext4: inotify (polling: false)``."""
        how = f"polling every {POLL_INTERVAL:g}s" if self.polling else "inotify"
        forced = f" (polling: {'true' if self.polling else 'false'})" if self.forced else ""
        return f"{self.fstype}: {how}{forced}"


@record
class WatchPlan:
    """How one watched root is observed: its Choice first, then any sub-mount watched the other way."""

    root: Path
    choices: tuple[Choice, ...]

    def polls(self, path: Path) -> bool:
        """Whether ``path`` (a file below the root) is on a polled filesystem: mtimes there are not trusted."""
        return self.choice_for(path).polling

    def choice_for(self, path: Path) -> Choice:
        best = self.choices[0]
        for choice in self.choices[1:]:
            if (path == choice.path or choice.path in path.parents) and len(choice.path.parts) > len(best.path.parts):
                best = choice
        return best


def plan_watch(root: Path, polling: bool | str, recursive: bool, table: MountTable) -> WatchPlan:
    """Resolve ``polling`` (true, false or "auto") for ``root`` and, when auto and recursive, the mounts below it."""
    real = os.path.realpath(root)  # mount points are real paths; a symlinked root is looked up where it leads
    mount = table.find(real)
    fstype = mount.fstype if mount is not None else "unknown"
    if isinstance(polling, bool):
        return WatchPlan(root, (Choice(root, fstype, polling, forced=True),))
    choices = [Choice(root, fstype, mount is not None and mount.network)]
    if recursive:
        for sub in table.below(real):
            path = root / os.path.relpath(sub.mount_point, real)
            # The Choice that would cover it otherwise: the deepest one it is inside (outermost mounts come first).
            around = max(
                (i for i, c in enumerate(choices) if c.path in path.parents), key=lambda i: len(choices[i].path.parts)
            )
            if choices[around].polling == sub.network:
                continue  # watched the same way as the folder around it: that observer covers it
            choices[around] = _exclude(choices[around], path)
            choices.append(Choice(path, sub.fstype, sub.network, submount=True))
    return WatchPlan(root, tuple(choices))


def _exclude(choice: Choice, path: Path) -> Choice:
    return Choice(choice.path, choice.fstype, choice.polling, choice.forced, choice.submount, (*choice.excluded, path))
