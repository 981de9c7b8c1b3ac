"""File permissions of what hpctrain creates: private by default, whatever the user's umask.

On a shared file system the usual leak is a permissive umask (002, or 000 in a container):
run dirs, checkpoints and logs then become readable or writable by every user on the cluster.
``hpctrain train`` and ``hpctrain submit`` therefore tighten the process umask before they
create anything: 077 (dirs 0700, files 0600), or 027 with ``--group-share``
(``run.group_share``: dirs 0750, files 0640) for a project allocation shared by a group. A
umask covers every writer at once (torch.save, matplotlib, TensorBoard, submitit's pickles,
and the Slurm job, which inherits it from sbatch), where explicit chmods would miss some.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_UMASK = 0o077
GROUP_UMASK = 0o027


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc), since a
    set-and-restore would briefly change it for every thread."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def private_umask(group_share: bool = False) -> int:
    """Tighten this process's umask so group (unless ``group_share``) and others get nothing;
    returns the previous umask. Without group sharing, bits the user already masks stay masked."""
    old = current_umask()
    new = GROUP_UMASK if group_share else old | PRIVATE_UMASK
    os.umask(new)
    return old


def dir_mode(group_share: bool = False) -> int:
    return 0o750 if group_share else 0o700


def make_private_dir(path: str | os.PathLike, group_share: bool = False) -> Path:
    """Create ``path`` (and parents) and set its own mode to 0700 (0750), umask or not; an
    existing directory of ours is tightened too."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    mode = dir_mode(group_share)
    try:
        if p.stat().st_uid == os.getuid():
            os.chmod(p, mode)
    except OSError:
        pass
    return p

