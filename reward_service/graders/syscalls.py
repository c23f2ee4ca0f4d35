"""The python graders' syscall filter: what user code may not ask the kernel for, compiled to
seccomp BPF by libseccomp (through `pyseccomp`) in the reward service, and installed by the
runner (`_runner.py`, which imports nothing but the standard library) as the last step
before the user's code runs.

Everything else is allowed: the filter takes away what a grader never needs and an escape
would, namespaces first (a grader could make user and mount namespaces of its own, in which
it is root again), then the kernel's other privileged or attack-surface calls.
"""

from __future__ import annotations

import errno
import functools
import tempfile

NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000, "CLONE_NEWTIME": 0x00000080,
}
"""clone() flags that make a namespace: refused on clone (its first argument)."""

REFUSED = (
    # namespaces and mounts
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount",
    "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    # other processes, the kernel's keyrings and its programmable parts
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # the machine's
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog", "open_by_handle_at",
    "name_to_handle_at", "settimeofday", "clock_settime", "adjtimex", "iopl", "ioperm",
)
"""Refused with EPERM."""


@functools.cache
def grader_filter() -> bytes:
    """The filter as seccomp BPF for this machine's architecture: `REFUSED` and clone with a
    namespace flag fail with EPERM; clone3, whose flags are behind a pointer the filter
    cannot read, fails with ENOSYS, so that the C library falls back to clone (threads and
    fork keep working)."""
    import pyseccomp as seccomp

    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    for name in REFUSED:
        try:
            rules.add_rule(seccomp.ERRNO(errno.EPERM), name)
        except (OSError, ValueError, RuntimeError):  # not a syscall on this architecture
            continue
    for flag in NAMESPACE_FLAGS.values():
        rules.add_rule(seccomp.ERRNO(errno.EPERM), "clone",
                       seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    with tempfile.TemporaryFile() as out:
        rules.export_bpf(out)
        out.flush()
        out.seek(0)
        program = out.read()
    if not program or len(program) % 8:
        raise RuntimeError(f"libseccomp exported {len(program)} bytes, not whole BPF insns")
    return program


def grader_filter_or_reason() -> tuple[bytes | None, str | None]:
    """(the filter, None), or (None, why it could not be built) where libseccomp is missing."""
    try:
        return grader_filter(), None
    except Exception as exc:  # noqa: BLE001 - reported to the operator through the graders
        return None, f"{type(exc).__name__}: {exc}"

