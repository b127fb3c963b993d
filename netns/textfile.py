"""A small text file handed to sandboxes (a resolv.conf, a hosts file, an fstab file), as a
person would write it: `cat > FILE <<EOF ... EOF; chmod MODE FILE`. Written whole under another
name and renamed over FILE, so a reader (`mount -a`, a bind) sees the old file or the new one,
never half of one, and a sandbox that bound the old one keeps its inode."""

from __future__ import annotations

import os
import shlex

from netns import record


def replace(path: str, content: str, mode: int) -> None:
    """FILE holds `content`, with `mode` whatever the caller's umask."""
    fd = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, content.encode())
    finally:
        os.close(fd)
    os.replace(path + ".new", path)
    if record.active():
        record.note_text(record.here_document(f"cat > {shlex.quote(path)}", content))
        record.note("chmod", f"{mode:o}", path)
