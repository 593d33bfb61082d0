//! A job that does its work and exits 0; with `restart = "on-failure"` it stays exited.
fn main() {
    let me = std::process::id();
    println!("oneshot[{me}]: preparing the box... done");
}
