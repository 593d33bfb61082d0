//! ham's cluster agent (`ham-cluster`): its etcd v3 client and the membership view. The
//! agent is a process ham supervises; ham, not the agent, holds every deadline that keeps
//! the cluster safe.

/// `eprintln!` as one `write` of the whole line: std's writes each piece of the format on
/// its own, and the agent shares its stderr with ham, whose lines then cut into its own.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        let line = format!("{}\n", format_args!($($arg)*));
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
    }};
}

pub mod etcd;
pub mod fence;
pub mod placement;
pub mod view;
