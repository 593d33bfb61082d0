//! What a pidfd tells (PIDFD_GET_INFO): a process's exit status once it is reaped.

use super::*;

const _: () = assert!(std::mem::size_of::<PidfdInfo>() == 64);
const PIDFD_INFO_EXIT: u64 = 1 << 3;
/// `_IOWR(0xFF, 11, struct pidfd_info)` with the 64-byte struct.
const PIDFD_GET_INFO: libc::c_ulong = (3 << 30) | (64 << 16) | (0xFF << 8) | 11;

/// `PIDFD_GET_INFO`'s argument (version 0, 64 bytes; `exit_code` since Linux 6.15). Defined
/// here because Debian 12's headers and the libc crate lack it.
#[repr(C)]
#[derive(Default)]
pub(super) struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    exit_code: i32,
}

/// The wait status of a process that has exited and been reaped (by anyone), through
/// `ioctl(PIDFD_GET_INFO)` with `PIDFD_INFO_EXIT` (Linux ≥ 6.15). `Ok(None)`: not available
/// (yet: not reaped, or an older kernel).
pub fn pidfd_exit_status(pidfd: impl AsFd) -> io::Result<Option<i32>> {
    if !pidfd_info_exit_supported() {
        return Ok(None);
    }
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_EXIT,
        ..Default::default()
    };
    // SAFETY: PIDFD_GET_INFO writes at most the size encoded in the request (64 bytes) into
    // `info`, which is exactly that large and lives across the call.
    let r = unsafe { libc::ioctl(pidfd.as_fd().as_raw_fd(), PIDFD_GET_INFO, &raw mut info) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            // ESRCH: gone and not reaped yet; ENOTTY/EINVAL: the kernel lacks the ioctl.
            Some(libc::ESRCH | libc::ENOTTY | libc::EINVAL) => Ok(None),
            _ => Err(e),
        };
    }
    Ok((info.mask & PIDFD_INFO_EXIT != 0).then_some(info.exit_code))
}

/// Whether this kernel has `PIDFD_GET_INFO` with `PIDFD_INFO_EXIT` (Linux ≥ 6.15).
pub fn pidfd_info_exit_supported() -> bool {
    super::kernel::at_least(6, 15)
}
