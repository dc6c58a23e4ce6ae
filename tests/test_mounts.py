"""`polling: auto`: filesystems read from mountinfo, the choice for a root and the mounts below it, and the
watcher acting on it.

A real NFS or SMB mount needs root, so the watcher tests hand rfwatch a mountinfo file that says the
temporary folder is one (RFWATCH_TEST_MOUNTINFO, which exists for tests only). Everything else about the
run is real: inotify and polling observers on a real folder, and the daemon against the API stand-in.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
from helpers import DaemonThread, files_under, run_cli, unique_jpeg, wait_for, write_config

from rfwatch.config import ConfigError, WatchConfig, config_from_dict
from rfwatch.service.mounts import MOUNTINFO_ENV, MountTable, is_network_fs, parse_mountinfo, plan_watch
from rfwatch.service.watcher import FolderWatcher

# Lines as the kernel writes them (proc(5)), taken from real machines: optional fields (shared:N, master:N,
# propagate_from:N, or none) before the lone "-", octal escapes in paths, options that contain "-" and ",".
MOUNTINFO = r"""22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw
25 27 0:23 / /dev/shm rw,nosuid,nodev shared:4 - tmpfs tmpfs rw,size=8141228k,inode64
27 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
41 27 8:17 / /data rw,relatime shared:30 - xfs /dev/sdb1 rw,attr2,inode64,logbufs=8,logbsize=32k,noquota
42 27 0:40 /@home /home rw,relatime shared:31 - btrfs /dev/nvme0n1p3 rw,ssd,space_cache=v2,subvolid=257,subvol=/@home
97 27 0:52 / /mnt/cam rw,relatime shared:58 - nfs4 nas.lan:/export/cam rw,vers=4.2,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=10.0.0.7,local_lock=none,addr=10.0.0.2
98 27 0:53 / /srv/nfs3 rw,relatime shared:59 master:12 - nfs 10.0.0.5:/volume1/photos rw,vers=3,rsize=131072,wsize=131072,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,mountaddr=10.0.0.5,mountvers=3,mountport=892,mountproto=udp,local_lock=none,addr=10.0.0.5
99 27 0:54 / /mnt/Camera\040Uploads rw,relatime shared:60 - cifs //nas/Camera\040Uploads rw,vers=3.1.1,cache=strict,username=bob,uid=1000,forceuid,gid=1000,forcegid,addr=10.0.0.2,file_mode=0755,dir_mode=0755,soft,nounix,serverino,mapposix,rsize=4194304,wsize=4194304,bsize=1048576,echo_interval=60,actimeo=1,closetimeo=1
100 27 0:55 / /mnt/traps rw,relatime shared:61 - smb3 //fileserver/traps rw,vers=3.0,cache=strict,username=field,uid=0,noforceuid,gid=0,noforcegid,addr=10.0.0.3
101 42 0:56 / /home/ana/field\040pc rw,nosuid,nodev,relatime shared:62 - fuse.sshfs ana@field-pc:/data rw,user_id=1000,group_id=1000
102 27 0:57 / /mnt/c rw,noatime shared:63 - 9p C:\134 rw,dirsync,aname=drvfs;path=C:\;uid=1000;gid=1000;symlinkroot=/mnt/,mmap,access=client,msize=65536,trans=fd,rfdno=8,wfdno=8
103 41 0:58 / /data/incoming/nas rw,relatime propagate_from:30 - nfs4 nas.lan:/export/incoming rw,vers=4.2,addr=10.0.0.2
104 97 0:59 / /mnt/cam/scratch rw,nosuid,nodev - tmpfs tmpfs rw,size=1048576k
105 27 0:60 / /var/lib/docker/overlay2/4f1c/merged rw,relatime - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/ABC:/var/lib/docker/overlay2/l/DEF,upperdir=/var/lib/docker/overlay2/4f1c/diff,workdir=/var/lib/docker/overlay2/4f1c/work
106 41 0:61 / /data/usb rw,nosuid,nodev,relatime shared:70 - fuseblk /dev/sdc1 rw,user_id=0,group_id=0,allow_other,blksize=4096
"""
TABLE = MountTable.from_text(MOUNTINFO)


@pytest.mark.parametrize(
    "path,fstype,network",
    [
        ("/mnt/cam/2024/IMG_1.jpg", "nfs4", True),
        ("/srv/nfs3", "nfs", True),
        ("/mnt/Camera Uploads/a.jpg", "cifs", True),  # \040 in the mount point is a space
        ("/mnt/traps/cam7", "smb3", True),
        ("/home/ana/field pc/cards", "fuse.sshfs", True),
        ("/mnt/c/Users/ana/Pictures", "9p", True),
        ("/dev/shm/inbox", "tmpfs", False),
        ("/srv/inbox", "ext4", False),  # no mount of its own: the root filesystem's
        ("/data/photos", "xfs", False),
        ("/home/ana/Pictures", "btrfs", False),
        ("/var/lib/docker/overlay2/4f1c/merged/inbox", "overlay", False),
        ("/data/usb/DCIM", "fuseblk", False),  # ntfs-3g on a local disk: written only through this kernel
        ("/mnt/camera/x.jpg", "ext4", False),  # /mnt/cam is not a prefix of /mnt/camera
    ],
)
def test_the_filesystem_of_a_path_is_its_longest_mount_point(path, fstype, network):
    mount = TABLE.find(path)
    assert mount is not None and mount.fstype == fstype
    assert mount.network is network


def test_mountinfo_fields_are_read_past_the_optional_ones_and_unescaped():
    mounts = {m.mount_point: m for m in parse_mountinfo(MOUNTINFO)}
    assert mounts["/srv/nfs3"].source == "10.0.0.5:/volume1/photos"  # two optional fields: shared:59 master:12
    assert mounts["/mnt/Camera Uploads"].source == "//nas/Camera Uploads"
    assert mounts["/mnt/c"].source == "C:\\"  # \134 is a backslash
    assert mounts["/var/lib/docker/overlay2/4f1c/merged"].fstype == "overlay"  # no optional field at all
    assert parse_mountinfo("garbage\n\n27 1 259:2 / / rw - ext4 /dev/vda rw\n") == [
        parse_mountinfo("27 1 259:2 / / rw - ext4 /dev/vda rw")[0]
    ]


def test_a_mount_stacked_on_the_same_point_hides_the_one_below():
    table = MountTable.from_text(
        "27 1 259:2 / / rw - ext4 /dev/vda rw\n"
        "50 27 0:44 / /mnt/share rw - autofs systemd-1 rw,fd=48\n"
        "51 50 0:45 / /mnt/share rw - nfs4 nas:/share rw\n"
    )
    assert TABLE.find("/") is not None and table.find("/mnt/share/a.jpg").fstype == "nfs4"
    assert [m.fstype for m in table.below("/mnt")] == ["nfs4"]


@pytest.mark.parametrize(
    "fstype", ["nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "fuse.rclone", "9p", "ceph", "glusterfs"]
)
def test_network_and_fuse_filesystems_are_polled(fstype):
    assert is_network_fs(fstype)


@pytest.mark.parametrize("fstype", ["ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "fuseblk", "vfat"])
def test_local_filesystems_are_not(fstype):
    assert not is_network_fs(fstype)


def test_auto_resolves_a_root_by_its_filesystem_and_true_or_false_force_it():
    (share,) = plan_watch(Path("/mnt/cam/2024"), "auto", False, TABLE).choices
    assert share.polling and share.describe() == "nfs4: polling every 1s"
    (local,) = plan_watch(Path("/data/photos"), "auto", True, TABLE).choices
    assert not local.polling and local.describe() == "xfs: inotify"
    (forced,) = plan_watch(Path("/mnt/cam"), False, True, TABLE).choices
    assert not forced.polling and forced.describe() == "nfs4: inotify (polling: false)"
    forced_on = plan_watch(Path("/data"), True, True, TABLE)
    assert forced_on.choices[0].describe() == "xfs: polling every 1s (polling: true)"
    assert len(forced_on.choices) == 1, "a forced choice holds for the mounts below too"


def test_a_share_mounted_below_a_local_root_is_polled_on_its_own_and_left_out_of_the_root():
    plan = plan_watch(Path("/data"), "auto", True, TABLE)
    root, share = plan.choices  # /data/usb (fuseblk) is local like /data: the root's observer covers it
    assert (root.path, root.polling, root.excluded) == (Path("/data"), False, (Path("/data/incoming/nas"),))
    assert (share.path, share.fstype, share.polling, share.submount) == (Path("/data/incoming/nas"), "nfs4", True, True)
    assert not root.covers(Path("/data/incoming/nas/a.jpg")) and root.covers(Path("/data/incoming/local.jpg"))
    assert plan.polls(Path("/data/incoming/nas/cam1/a.jpg")) and not plan.polls(Path("/data/incoming/a.jpg"))
    assert not plan.polls(Path("/data/incoming/nasty.jpg"))
    # Not recursive: only the root's own files are watched, on the root's filesystem.
    assert len(plan_watch(Path("/data"), "auto", False, TABLE).choices) == 1


def test_a_local_mount_below_a_polled_root_is_watched_with_inotify():
    root, scratch = plan_watch(Path("/mnt/cam"), "auto", True, TABLE).choices
    assert root.polling and root.excluded == (Path("/mnt/cam/scratch"),)
    assert scratch.fstype == "tmpfs" and not scratch.polling


def test_a_symlinked_root_is_looked_up_where_it_leads_and_watched_as_configured(tmp_path):
    real = tmp_path / "real"
    (real / "nas").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    table = MountTable.from_text(
        f"27 1 259:2 / / rw - ext4 /dev/vda rw\n60 27 0:70 / {_escape(real.resolve() / 'nas')} rw - nfs4 nas:/x rw\n"
    )
    _, share = plan_watch(tmp_path / "link", "auto", True, table).choices
    assert share.path == tmp_path / "link" / "nas" and share.polling


# --- config ----------------------------------------------------------------------------


def test_polling_is_auto_unless_set_to_true_or_false(tmp_path):
    def polling(value):
        item = {"path": "in"} if value is None else {"path": "in", "polling": value}
        return config_from_dict({"watch": [item]}, tmp_path).watch[0].polling

    assert polling(None) == "auto" and polling("auto") == "auto"
    assert polling(True) is True and polling(False) is False
    for bad in ("sometimes", "yes", 1, "AUTO"):
        with pytest.raises(ConfigError, match=r"^watch\[0\]\.polling: expected auto, true or false, got "):
            polling(bad)


# --- the watcher --------------------------------------------------------------------------


def _escape(path: Path) -> str:
    return str(path).replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")


def _fake_mounts(tmp_path: Path, monkeypatch, mounts: dict[Path, str]) -> None:
    """Make rfwatch believe each folder in ``mounts`` is a mount of that type (the rest: the real root's ext4)."""
    lines = ["27 1 259:2 / / rw,relatime shared:1 - ext4 /dev/vda rw"]
    for i, (folder, fstype) in enumerate(mounts.items()):
        lines.append(
            f"{200 + i} 27 0:{90 + i} / {_escape(folder.resolve())} rw,relatime shared:{90 + i} - {fstype} nas:/x rw"
        )
    info = tmp_path / "mountinfo"
    info.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv(MOUNTINFO_ENV, str(info))


def test_a_share_below_a_local_root_is_polled_and_its_files_offered_once(tmp_path, monkeypatch, caplog):
    """inotify also sees the (really local) share folder; those events are dropped, so a file there is taken only
    once polling has watched it `settle` seconds: its old mtime, trusted on a local disk, is not on a share."""
    root = tmp_path / "root"
    share = root / "nas"
    share.mkdir(parents=True)
    _fake_mounts(tmp_path, monkeypatch, {share: "nfs4"})
    settle = 3.0
    handed: list[tuple[Path, float]] = []
    watcher = FolderWatcher(
        (WatchConfig(path=root, settle=settle),), lambda p, w, at: handed.append((p, time.monotonic()))
    )
    caplog.set_level(logging.INFO, logger="rfwatch.service.watcher")
    watcher.start()
    try:
        wait_for(lambda: not watcher.scanning(), what="the start-up scan")
        assert f"watching {root} (ext4: inotify)" in caplog.text
        assert f"watching {share}, a mount below {root} (nfs4: polling every 1s)" in caplog.text
        # Written elsewhere an hour ago, renamed into place now (as rsync does): complete when they appear.
        old = time.time() - 3600
        local, remote = root / "local.jpg", share / "remote.jpg"
        for path in (local, remote):
            staged = tmp_path / path.name
            staged.write_bytes(unique_jpeg((200, 0, 0), len(path.name)))
            os.utime(staged, (old, old))
        written = time.monotonic()
        for path in (local, remote):
            (tmp_path / path.name).rename(path)
        wait_for(lambda: watcher.tick() == 0 and len(handed) == 2, interval=0.02, timeout=30, what="both files")
        taken = dict(handed)
        assert taken[local] - written < settle - 1.0, "the local file's old mtime was not trusted"
        assert taken[remote] - written >= settle - 0.2, "the share's file was taken on its mtime (inotify's offer)"
        deadline = time.monotonic() + 1.5  # another poll or two: nothing is offered twice
        while time.monotonic() < deadline:
            watcher.tick()
            time.sleep(0.02)
        assert [p for p, _ in handed].count(remote) == 1 and watcher.pending() == 0
    finally:
        watcher.stop()


def test_a_local_disk_below_a_polled_root_is_left_to_inotify(tmp_path, monkeypatch):
    """The reverse case: the polling observer does not list the local mount, inotify reports its files at once."""
    root = tmp_path / "root"
    disk = root / "usb"
    disk.mkdir(parents=True)
    _fake_mounts(tmp_path, monkeypatch, {root: "cifs", disk: "xfs"})
    handed: list[tuple[Path, float]] = []
    watcher = FolderWatcher(
        (WatchConfig(path=root, settle=3.0),), lambda p, w, at: handed.append((p, time.monotonic()))
    )
    watcher.start()
    try:
        wait_for(lambda: not watcher.scanning(), what="the start-up scan")
        polled, notified = watcher._observers
        (emitter,) = polled.emitters
        # watchdog's snapshot of what it polls (a private attribute: the one place to see what was listed).
        assert str(root) in emitter._snapshot.paths and not any(str(disk) in p for p in emitter._snapshot.paths)
        staged = tmp_path / "a.jpg"
        staged.write_bytes(unique_jpeg((0, 200, 0), 7))
        os.utime(staged, (time.time() - 3600,) * 2)
        moved = time.monotonic()
        staged.rename(disk / "a.jpg")
        wait_for(lambda: watcher.tick() == 0 and handed, interval=0.02, what="the file on the local disk")
        assert handed[0][1] - moved < 2.0, "taken as if on the share: its mtime was not trusted"
    finally:
        watcher.stop()


def test_a_root_on_a_share_is_polled_by_the_daemon(tmp_path, server, api_key, monkeypatch, caplog):
    from watchdog.observers.polling import PollingObserver

    cfg = write_config(tmp_path, server)  # polling not set: auto
    inbox = tmp_path / "inbox"
    _fake_mounts(tmp_path, monkeypatch, {inbox: "nfs4"})
    caplog.set_level(logging.INFO, logger="rfwatch.service.watcher")
    with DaemonThread(cfg) as d:
        assert [type(o) for o in d.daemon.watcher._observers] == [PollingObserver]
        assert f"watching {inbox} (nfs4: polling every 1s)" in caplog.text
        (inbox / "a.jpg").write_bytes(unique_jpeg((230, 10, 10), 1))
        wait_for(lambda: files_under(tmp_path / "sorted"), what="the file taken by polling")
    assert files_under(tmp_path / "sorted") == [tmp_path / "sorted" / "red" / "a.jpg"]


def test_check_names_each_roots_choice_and_filesystem(tmp_path, server):
    cfg = write_config(tmp_path, server, watch=[{"path": "inbox", "settle": 2}, {"path": "local", "polling": True}])
    (tmp_path / "local").mkdir()
    (tmp_path / "inbox" / "nas").mkdir()
    info = tmp_path / "mountinfo"
    info.write_text(
        "27 1 259:2 / / rw - ext4 /dev/vda rw\n"
        f"60 27 0:70 / {_escape((tmp_path / 'inbox' / 'nas').resolve())} rw shared:3 - cifs //nas/x rw\n"
    )
    result = run_cli("check", "-c", str(cfg), env={MOUNTINFO_ENV: str(info)})
    assert result.returncode == 0, result.stderr
    inbox = tmp_path / "inbox"
    assert f"watch: {inbox} (ext4: inotify; settle 2s)" in result.stdout
    assert f"watch: {inbox / 'nas'}, a mount below {inbox} (cifs: polling every 1s)" in result.stdout
    assert f"watch: {tmp_path / 'local'} (ext4: polling every 1s (polling: true); settle 1s)" in result.stdout
