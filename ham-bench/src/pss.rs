//! `pss_put`: the checkpoint store's put, against what it stands in for. A volatile 256-byte
//! put (shared memory, no system call) against one `pwrite` of 256 bytes to a file in
//! `/dev/shm` (the floor of any put that enters the kernel); a durable put (the put, then
//! ham writes the entity's durable keys as a new file, fsync, rename, fsync of the folder,
//! on its committer thread) against the bench doing that same file write itself, in the
//! same folder. All in this run, on this machine.

use std::io::Write;
use std::os::unix::fs::FileExt;

use ham_detector_sdk::{Durability, Scope};
use serde_json::Map;

use crate::report::{Outcome, ScenarioResult};
use crate::scenarios::{Params, Problems, finish, progress};
use crate::sdk::{connect, measured, plain_entity, time_batches};
use crate::sys::{self, Result, mono_ns};
use crate::systems::{Ctx, Sup};

const VALUE: [u8; 256] = [0x5a; 256];

/// Durable puts (and file writes) timed one by one.
const DURABLE_OPS: usize = 200;

pub fn pss_put(ctx: &Ctx, p: &Params, problems: &mut Problems) -> Result<ScenarioResult> {
    let mut res = ScenarioResult {
        scenario: "pss_put",
        unit: "ns",
        title: format!(
            "one 256-byte checkpoint put: ham = Pss::put (volatile: shared memory, no system \
             call; {} batches of 10000) vs one pwrite of 256 bytes to a /dev/shm file; \
             ham-durable = a durable put ({DURABLE_OPS}, each until ham has it on disk) vs \
             file-fsync = write a new file, fsync, rename, fsync the folder, in the same folder",
            p.hb_batches
        ),
        systems: Vec::new(),
        ratios: true,
        ratio_pairs: vec![("ham", "pwrite-shm"), ("ham-durable", "file-fsync")],
        columns: Vec::new(),
        ratio_metrics: Vec::new(),
        notes: Vec::new(),
    };
    eprintln!("[pss_put] ham");
    let mut state_dir = None;
    let ham = (|| -> Result<(Vec<f64>, Vec<f64>)> {
        let mut sup = Sup::start_ham(
            ctx,
            "pss",
            "state_dir = \"state\"\n",
            &plain_entity("store"),
        )?;
        let client = connect(&sup)?;
        let store = client.pss("store").map_err(|e| format!("pss-open: {e}"))?;
        let volatile = time_batches(p.hb_batches, || {
            store
                .put("k", &VALUE, Scope::Private, Durability::Volatile)
                .expect("a volatile put");
        })?;
        let mut durable = Vec::with_capacity(DURABLE_OPS);
        for k in 0..DURABLE_OPS {
            sys::check_interrupted()?;
            let t0 = mono_ns();
            store
                .put(
                    &format!("d{}", k % 8),
                    &VALUE,
                    Scope::Private,
                    Durability::Durable,
                )
                .map_err(|e| format!("durable put: {e}"))?;
            durable.push((mono_ns() - t0) as f64);
        }
        state_dir = Some(sup.dir.join("state"));
        finish(&mut sup, problems);
        Ok((volatile, durable))
    })();
    sys::check_interrupted()?;
    let (volatile, durable) = match ham {
        Ok(v) => (Ok(v.0), Ok(v.1)),
        Err(e) => (Err(e.clone()), Err(e)),
    };
    let outcome = |r: Result<Vec<f64>>| match r {
        Ok(v) => measured(&v, 0, Map::new()),
        Err(e) => Outcome::Failed(e),
    };
    res.systems.push(("ham".into(), outcome(volatile)));
    eprintln!("[pss_put] pwrite-shm");
    res.systems
        .push(("pwrite-shm".into(), outcome(pwrite_shm(p.hb_batches))));
    res.systems.push(("ham-durable".into(), outcome(durable)));
    eprintln!("[pss_put] file-fsync");
    let dir = state_dir.unwrap_or_else(std::env::temp_dir);
    res.systems
        .push(("file-fsync".into(), outcome(file_fsync(&dir))));
    for (name, o) in &res.systems {
        if let Outcome::Measured { stats, .. } = o {
            progress(format!("{name}: median {:.1} ns", stats.median));
        }
    }
    res.notes.push(
        "a durable put also pays a request to ham and its answer (a connection each); \
         concurrent durable puts share ham's writes (group commit), which this single \
         writer does not show"
            .into(),
    );
    Ok(res)
}

/// One `pwrite` of 256 bytes to a file in /dev/shm, per op.
fn pwrite_shm(batches: usize) -> Result<Vec<f64>> {
    let path =
        std::path::PathBuf::from(format!("/dev/shm/ham-bench-pwrite-{}", std::process::id()));
    let f = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let _ = std::fs::remove_file(&path);
    time_batches(batches, || {
        f.write_all_at(&VALUE, 0).expect("pwrite");
    })
}

/// A new file with the value, fsync, rename over the old one, fsync the folder: per op.
fn file_fsync(dir: &std::path::Path) -> Result<Vec<f64>> {
    let dir = dir.join("bench-baseline");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (tmp, path) = (dir.join("f.tmp"), dir.join("f"));
    let mut v = Vec::with_capacity(DURABLE_OPS);
    for _ in 0..DURABLE_OPS {
        sys::check_interrupted()?;
        let t0 = mono_ns();
        (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&VALUE)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&dir)?.sync_all()
        })()
        .map_err(|e| format!("{}: {e}", path.display()))?;
        v.push((mono_ns() - t0) as f64);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(v)
}
