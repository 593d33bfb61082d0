//! Several instances side by side.

use crate::util::*;

#[test]
fn two_instances_run_side_by_side_without_interfering() {
    let mut one = Ham::start("one", &format!("{}{}", sleeper("web"), sleeper("db")));
    let two = Ham::start("two", &format!("{}{}", sleeper("web"), sleeper("db")));
    let s1 = one.wait_for("one up", |s| running(s, "web") && running(s, "db"));
    let s2 = two.wait_for("two up", |s| running(s, "web") && running(s, "db"));
    assert_ne!(s1["ham"]["pid"], s2["ham"]["pid"]);
    assert_ne!(pid_of(&s1, "web"), pid_of(&s2, "web"));

    // A death in one is handled by that one only.
    sigkill(pid_of(&s1, "web"));
    one.wait_for("one's web restarted", |s| {
        running(s, "web") && entity(s, "web")["restarts"] == 1
    });
    // A stop in the other touches only its own entity of the same name.
    assert!(two.ctl(&["stop", "db"]).status.success());
    let s1 = one.status();
    let s2 = two.status();
    assert_eq!(entity(&s2, "web")["restarts"], 0);
    assert_eq!(pid_of(&s2, "web"), pid_of(&two.status(), "web"));
    assert!(running(&s1, "db"));
    assert_eq!(entity(&s2, "db")["state"], "stopped");

    // Shutting one down leaves the other running.
    let web2 = pid_of(&s2, "web");
    let web2_start = start_time(web2).unwrap();
    assert!(one.ctl(&["shutdown"]).status.success());
    assert_eq!(one.wait_exit(), 0);
    assert!(alive(web2, web2_start));
    assert!(running(&two.status(), "web"));
    assert!(two.segment_path().exists());
}
