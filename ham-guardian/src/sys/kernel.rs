//! Which kernel ham acts on. Newer mechanisms are used where the kernel has them, with a
//! fallback for each (the README's "Requirements" lists them); `HAM_KERNEL_COMPAT=5.4`
//! makes ham act as on that older kernel, so the fallbacks are tested on a new one.

use std::sync::OnceLock;

/// The oldest kernel ham runs on: `pidfd_open` (5.3) and `waitid(P_PIDFD)` (5.4) have no
/// fallback.
pub const MINIMUM: (u32, u32) = (5, 4);

/// The environment variable that lowers the version ham acts on.
pub const COMPAT_ENV: &str = "HAM_KERNEL_COMPAT";

/// `MAJOR.MINOR` at the start of a release string (`6.18.44-…`).
fn parse(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The running kernel's version (uname).
pub fn running() -> (u32, u32) {
    let v = rustix::system::uname();
    parse(&v.release().to_string_lossy()).unwrap_or((0, 0))
}

/// The version ham acts on: the running kernel's, or `HAM_KERNEL_COMPAT`'s if that is
/// lower (it can only switch mechanisms off, never claim ones the kernel lacks).
pub fn acting() -> (u32, u32) {
    static V: OnceLock<(u32, u32)> = OnceLock::new();
    *V.get_or_init(|| {
        let real = running();
        std::env::var(COMPAT_ENV)
            .ok()
            .and_then(|v| parse(&v))
            .map_or(real, |c| c.min(real))
    })
}

/// Whether ham may use a mechanism that came with kernel `major.minor`.
pub fn at_least(major: u32, minor: u32) -> bool {
    acting() >= (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_release_strings() {
        assert_eq!(parse("6.18.44-cloud-amd64"), Some((6, 18)));
        assert_eq!(parse("5.4"), Some((5, 4)));
        assert_eq!(parse("x"), None);
    }
}
