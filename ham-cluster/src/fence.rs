//! `ham-cluster --fence`: the fence keeper, an entity ham adds with `[cluster]`. It reads the
//! fence deadline ham keeps in its state segment (read only) and, once the deadline has
//! passed, kills every process the cluster placed on this node that still runs. While ham
//! lives it has stopped them already (its own timer fires a stop timeout earlier), so this
//! only ever acts when ham and its Guardian are gone and the agent too (nobody renews the
//! lease any more): the orphaned copy is gone by the deadline, before the lease can expire
//! and another node start its own.

use std::time::Duration;

use ham_core::layout::EntityRecord;
use ham_core::segment::Segment;

/// Longest sleep: the segment is opened again this often (a cold start makes a new one).
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// What to kill now: placed records whose process (pid and start time) still runs.
pub fn to_kill(records: &[EntityRecord], alive: impl Fn(i32, u64) -> bool) -> Vec<(String, i32)> {
    records
        .iter()
        .filter(|r| r.fencing_token != 0 && r.pid > 0 && r.state.has_process())
        .filter(|r| alive(r.pid, r.start_time))
        .map(|r| (r.name.clone(), r.pid))
        .collect()
}

/// Runs for ever: sleeps until the deadline (or a second), then looks.
pub fn keep(segment_name: &str) -> ! {
    let mut said_missing = false;
    loop {
        let seg = match Segment::open_for_status(segment_name) {
            Ok(s) => {
                said_missing = false;
                s
            }
            Err(e) => {
                if !said_missing {
                    crate::say!("ham-fence: {e}; looking again every second");
                    said_missing = true;
                }
                std::thread::sleep(LOOK_EVERY);
                continue;
            }
        };
        let (_, at) = seg.header().fence();
        let now = ham_core::clock::mono_ns();
        if at == 0 || now < at {
            let left = if at == 0 {
                LOOK_EVERY
            } else {
                Duration::from_nanos(at - now).min(LOOK_EVERY)
            };
            std::thread::sleep(left);
            continue;
        }
        let records: Vec<EntityRecord> = seg
            .records()
            .into_iter()
            .filter_map(|(_, r)| r.ok())
            .collect();
        let alive = |pid: i32, start: u64| ham_guardian::procfs::start_time(pid) == Some(start);
        for (name, pid) in to_kill(&records, alive) {
            crate::say!(
                "ham-fence: {name} (pid {pid}) still runs past the fence deadline (no ham stopped \
                 it): killing it and its process group"
            );
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ham_core::layout::EntityState;

    fn rec(name: &str, token: u64, pid: i32, state: EntityState) -> EntityRecord {
        let mut r = EntityRecord::new(name);
        r.fencing_token = token;
        r.pid = pid;
        r.start_time = 7;
        r.state = state;
        r
    }

    #[test]
    fn only_placed_processes_that_still_run_are_killed() {
        let recs = [
            rec("placed", 5, 100, EntityState::Running),
            rec("local", 0, 101, EntityState::Running),
            rec("placed-gone", 6, 102, EntityState::Running),
            rec("placed-stopped", 7, 0, EntityState::Stopped),
        ];
        let alive = |pid: i32, _| pid != 102;
        assert_eq!(to_kill(&recs, alive), [("placed".to_string(), 100)]);
    }
}
