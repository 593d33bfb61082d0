//! The named shared-memory object that holds the state (`shm_open(3)`, under `/dev/shm`).
//!
//! It outlives the HAM and its Guardian on purpose: a later `ham` finds it and starts warm.
//! Only the HAM owning the current epoch writes it, through [`SegmentWriter`]; everyone else
//! maps it read-only and validates magic, layout version and geometry before trusting it.

use std::fs::File;
use std::io;
use std::mem::size_of;

use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::Mode;
use rustix::shm;

use crate::blob::Blob;
use crate::journal::{RUN_SLOTS, RunRecord, RunSlot};
use crate::layout::{
    EntityRecord, EntitySlot, FLAG_STOP_INTENT, Header, Hook, LAYOUT_VERSION, MAGIC, MIGRATES_FROM,
    RecordError, SlotIndex,
};

/// Why a segment could not be created, opened or written.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("segment {name} does not exist")]
    NotFound { name: String },
    #[error("segment {name} already exists")]
    Exists { name: String },
    #[error("segment {name}: {what}: {source}")]
    Io {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("segment {name} is not a ham state segment (magic {found:#018x})")]
    BadMagic { name: String, found: u64 },
    #[error("segment {name} has layout version {found}, this ham understands {expected}")]
    Version {
        name: String,
        found: u32,
        expected: u32,
    },
    #[error("segment {name} is inconsistent: {why}")]
    Geometry { name: String, why: String },
    /// The name is taken by an object this ham did not create (`/dev/shm` is
    /// world-writable): it is never used, and never trusted for "already running".
    #[error(
        "segment {name} is not ham's own: it belongs to uid {uid} with mode {mode:04o} \
         (expected uid {expected_uid}, mode {expected_mode:04o}); someone else created this \
         name — remove /dev/shm{name} once you know why it is there"
    )]
    Foreign {
        name: String,
        uid: u32,
        mode: u32,
        expected_uid: u32,
        expected_mode: u32,
    },
    #[error("entity slot {index} is out of range (capacity {capacity})")]
    NoSlot { index: u32, capacity: u32 },
    /// Another HAM took ownership: this one must stop writing at once.
    #[error("fenced: this HAM owns epoch {ours} but the segment is at epoch {current}")]
    Fenced { ours: u64, current: u64 },
    #[error("entity slot {index}: {source}")]
    Record {
        index: u32,
        #[source]
        source: RecordError,
    },
}

/// Read-only or read-write mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// Every record of a segment: its slot, and the record or why it could not be read.
pub type Records = Vec<(SlotIndex, Result<EntityRecord, RecordError>)>;

/// A mapped, validated state segment.
pub struct Segment {
    name: String,
    map: MmapRaw,
    capacity: u32,
    access: Access,
}

/// Bytes needed for `capacity` entity slots, rounded up to whole pages.
pub fn segment_size(capacity: u32) -> u64 {
    let raw = defs_offset(capacity) + size_of::<Blob>() as u64;
    raw.div_ceil(4096) * 4096
}

/// Where the run journal starts: right after the entity slots (a multiple of 64 bytes).
fn runs_offset(capacity: u32) -> u64 {
    size_of::<Header>() as u64 + u64::from(capacity) * size_of::<EntitySlot>() as u64
}

/// Where the run-time definitions start: right after the run journal.
fn defs_offset(capacity: u32) -> u64 {
    runs_offset(capacity) + u64::from(RUN_SLOTS) * size_of::<RunSlot>() as u64
}

fn io_err<'a>(name: &'a str, what: &'static str) -> impl FnOnce(io::Error) -> SegmentError + 'a {
    move |source| SegmentError::Io {
        name: name.to_owned(),
        what,
        source,
    }
}

/// The mode ham gives its state segment (only its own user reads or writes it).
pub const STATE_MODE: u32 = 0o600;

/// Checks that an open shared-memory object is ham's own: owned by this process's
/// effective uid with exactly `mode`. A name anyone could have created is otherwise
/// trusted for nothing.
pub fn check_owned(file: &File, name: &str, mode: u32) -> Result<(), SegmentError> {
    use std::os::unix::fs::MetadataExt;
    let md = file.metadata().map_err(io_err(name, "fstat"))?;
    let me = rustix::process::geteuid().as_raw();
    if md.uid() != me || md.mode() & 0o7777 != mode {
        return Err(SegmentError::Foreign {
            name: name.into(),
            uid: md.uid(),
            mode: md.mode() & 0o7777,
            expected_uid: me,
            expected_mode: mode,
        });
    }
    Ok(())
}

/// A new shm object `name` of ham's own: `mode`, `len` bytes allocated now (a full
/// `/dev/shm` fails here, with a message, and not with a SIGBUS in a process later). An
/// object of ham's own by that name is replaced; one that is not is refused. The name is
/// removed again if anything after its creation fails.
pub fn create_owned(name: &str, mode: u32, len: u64) -> Result<std::os::fd::OwnedFd, SegmentError> {
    probe_foreign(name, mode)?;
    let _ = shm::unlink(name);
    let fd = shm::open(
        name,
        shm::OFlags::CREATE | shm::OFlags::EXCL | shm::OFlags::RDWR,
        Mode::from_raw_mode(mode),
    )
    .map_err(|e| io_err(name, "shm_open")(e.into()))?;
    let sized = rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
        .map_err(|e| io_err(name, "fchmod")(e.into()))
        .and_then(|()| {
            rustix::fs::fallocate(&fd, rustix::fs::FallocateFlags::empty(), 0, len)
                .map_err(|e| io_err(name, "fallocate")(e.into()))
        });
    if let Err(e) = sized {
        let _ = shm::unlink(name);
        return Err(e);
    }
    Ok(fd)
}

/// Opens the existing shm object `name` ([`SegmentError::NotFound`] when there is none).
fn shm_open(name: &str, flags: shm::OFlags) -> Result<std::os::fd::OwnedFd, SegmentError> {
    shm::open(name, flags, Mode::empty()).map_err(|e| {
        if e == rustix::io::Errno::NOENT {
            SegmentError::NotFound { name: name.into() }
        } else {
            io_err(name, "shm_open")(e.into())
        }
    })
}

/// The shm object `name`, if it is ham's own with `mode` ([`SegmentError::NotFound`] when
/// there is none).
pub fn open_owned(name: &str, mode: u32) -> Result<std::os::fd::OwnedFd, SegmentError> {
    let fd = shm_open(name, shm::OFlags::RDWR)?;
    check_owned(
        &File::from(fd.try_clone().map_err(io_err(name, "dup"))?),
        name,
        mode,
    )?;
    Ok(fd)
}

/// Maps the whole object behind `fd` (which must have at least `min` bytes): the mapping
/// and its length.
pub fn map_whole(
    fd: &impl std::os::fd::AsFd,
    name: &str,
    min: usize,
) -> Result<(MmapRaw, usize), SegmentError> {
    let file = File::from(
        fd.as_fd()
            .try_clone_to_owned()
            .map_err(io_err(name, "dup"))?,
    );
    let len = file.metadata().map_err(io_err(name, "fstat"))?.len() as usize;
    if len < min {
        return Err(SegmentError::Geometry {
            name: name.into(),
            why: format!("{len} bytes, less than its {min}"),
        });
    }
    let map = memmap2::MmapOptions::new()
        .len(len)
        .map_raw(&file)
        .map_err(io_err(name, "mmap"))?;
    Ok((map, len))
}

/// A mapped object's magic and layout version, checked.
pub fn check_version(
    name: &str,
    magic: (u64, u64),
    version: (u32, u32),
) -> Result<(), SegmentError> {
    if magic.0 != magic.1 {
        return Err(SegmentError::BadMagic {
            name: name.into(),
            found: magic.0,
        });
    }
    if version.0 != version.1 {
        return Err(SegmentError::Version {
            name: name.into(),
            found: version.0,
            expected: version.1,
        });
    }
    Ok(())
}

/// Who owns the object `name`, if it exists and is not ham's own ([`check_owned`]).
pub fn probe_foreign(name: &str, mode: u32) -> Result<(), SegmentError> {
    match shm::open(name, shm::OFlags::RDONLY, Mode::empty()) {
        Ok(fd) => check_owned(&File::from(fd), name, mode),
        Err(rustix::io::Errno::NOENT) => Ok(()),
        // Not even readable: not ours (ham creates its objects readable by itself).
        Err(e) => Err(io_err(name, "shm_open")(e.into())),
    }
}

impl Segment {
    /// Creates a new, zero-filled segment (mode 0600) with room for `capacity` entities.
    /// Fails with [`SegmentError::Exists`] if the name is taken.
    pub fn create(name: &str, capacity: u32, created_unix_ns: u64) -> Result<Self, SegmentError> {
        let fd = shm::open(
            name,
            shm::OFlags::CREATE | shm::OFlags::EXCL | shm::OFlags::RDWR,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| {
            if e == rustix::io::Errno::EXIST {
                SegmentError::Exists { name: name.into() }
            } else {
                io_err(name, "shm_open")(e.into())
            }
        })?;
        let file = File::from(fd);
        let size = segment_size(capacity);
        let made = (|| {
            // Exactly STATE_MODE, whatever the umask.
            rustix::fs::fchmod(&file, Mode::from_raw_mode(STATE_MODE))
                .map_err(|e| io_err(name, "fchmod")(e.into()))?;
            file.set_len(size).map_err(io_err(name, "ftruncate"))?;
            // Every page now, not on first touch: with /dev/shm full this fails here with
            // a message, where a sparse object would SIGBUS the HAM (and then each
            // successor) at some later write.
            rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size)
                .map_err(|e| io_err(name, "fallocate (is /dev/shm full?)")(e.into()))?;
            let map = MmapOptions::new()
                .len(size as usize)
                .map_raw(&file)
                .map_err(io_err(name, "mmap"))?;
            Ok(Self {
                name: name.into(),
                map,
                capacity,
                access: Access::ReadWrite,
            })
        })();
        let seg = match made {
            Ok(seg) => seg,
            Err(e) => {
                let _ = shm::unlink(name);
                return Err(e);
            }
        };
        seg.header().init(size, capacity, created_unix_ns);
        Ok(seg)
    }

    /// Opens an existing segment and validates it: it must be ham's own (this user's, mode
    /// [`STATE_MODE`]; [`SegmentError::Foreign`] otherwise) and of this layout.
    pub fn open(name: &str, access: Access) -> Result<Self, SegmentError> {
        Self::open_checked(name, access, true)
    }

    /// Opens a segment for reading its status, as root may for an instance of any user
    /// (`hamctl`): the mode is still checked, the owner only when not root.
    pub fn open_for_status(name: &str) -> Result<Self, SegmentError> {
        let root = rustix::process::geteuid().is_root();
        Self::open_checked(name, Access::ReadOnly, !root)
    }

    /// Opens a segment as [`Segment::open`] read-only does, mapped read-only, but through a
    /// descriptor open for writing, so that [`Segment::make_writable`] can later make the
    /// same mapping writable: a Guardian watches through it and writes through it only
    /// once it has taken over, without mapping the segment again.
    pub fn open_promotable(name: &str) -> Result<Self, SegmentError> {
        Self::open_fd(name, Access::ReadOnly, shm::OFlags::RDWR, true)
    }

    /// Maps now the pages of the header and of the slots in use (see
    /// [`crate::shm::populate_read`]): a Guardian, so that reading every record at a
    /// takeover takes no page fault. The pages are the HAM's too (it wrote them), so the
    /// pair's memory does not grow.
    pub fn populate_used(&self) -> Result<(), SegmentError> {
        let used = size_of::<Header>()
            + self.header().entity_count().min(self.capacity) as usize * size_of::<EntitySlot>();
        crate::shm::populate_read(&self.map, used).map_err(io_err(&self.name, "madvise"))
    }

    /// Makes a mapping from [`Segment::open_promotable`] writable (nothing to do if it is).
    pub fn make_writable(&mut self) -> Result<(), SegmentError> {
        if self.access == Access::ReadWrite {
            return Ok(());
        }
        // Refused (EACCES) unless the descriptor was open for writing (`open_promotable`).
        crate::shm::make_writable(&self.map).map_err(io_err(&self.name, "mprotect"))?;
        self.access = Access::ReadWrite;
        Ok(())
    }

    fn open_checked(name: &str, access: Access, owner: bool) -> Result<Self, SegmentError> {
        let oflags = match access {
            Access::ReadOnly => shm::OFlags::RDONLY,
            Access::ReadWrite => shm::OFlags::RDWR,
        };
        Self::open_fd(name, access, oflags, owner)
    }

    fn open_fd(
        name: &str,
        access: Access,
        oflags: shm::OFlags,
        owner: bool,
    ) -> Result<Self, SegmentError> {
        let fd = shm_open(name, oflags)?;
        let file = File::from(fd);
        match check_owned(&file, name, STATE_MODE) {
            // Root reading another user's instance.
            Err(SegmentError::Foreign {
                mode: STATE_MODE, ..
            }) if !owner => {}
            r => r?,
        }
        let len = file.metadata().map_err(io_err(name, "fstat"))?.len();
        let geometry = |why: String| SegmentError::Geometry {
            name: name.into(),
            why,
        };
        if len < size_of::<Header>() as u64 {
            return Err(geometry(format!("{len} bytes, smaller than the header")));
        }
        let len_usize = usize::try_from(len).map_err(|_| geometry(format!("{len} bytes")))?;
        let opts = {
            let mut o = MmapOptions::new();
            o.len(len_usize);
            o
        };
        let map = match access {
            Access::ReadOnly => opts.map_raw_read_only(&file),
            Access::ReadWrite => opts.map_raw(&file),
        }
        .map_err(io_err(name, "mmap"))?;
        let mut seg = Self {
            name: name.into(),
            map,
            capacity: 0,
            access,
        };
        let h = seg.header();
        let magic = h.magic();
        if magic != MAGIC {
            return Err(SegmentError::BadMagic {
                name: name.into(),
                found: magic,
            });
        }
        let version = h.layout_version();
        if version != LAYOUT_VERSION && !MIGRATES_FROM.contains(&version) {
            return Err(SegmentError::Version {
                name: name.into(),
                found: version,
                expected: LAYOUT_VERSION,
            });
        }
        if h.header_size() as usize != size_of::<Header>()
            || h.slot_size() as usize != size_of::<EntitySlot>()
            || h.entities_offset() != size_of::<Header>() as u64
        {
            return Err(geometry(format!(
                "header {} / slot {} / offset {} bytes, expected {} / {} / {}",
                h.header_size(),
                h.slot_size(),
                h.entities_offset(),
                size_of::<Header>(),
                size_of::<EntitySlot>(),
                size_of::<Header>()
            )));
        }
        let capacity = h.entity_capacity();
        if h.total_size() != len || segment_size(capacity) > len {
            return Err(geometry(format!(
                "size field {} and capacity {capacity} do not fit the object's {len} bytes",
                h.total_size()
            )));
        }
        seg.capacity = capacity;
        Ok(seg)
    }

    /// Whether the segment is of an older layout this build migrates (see
    /// [`crate::layout::MIGRATES_FROM`]); its records must not be read before
    /// [`Segment::migrate`].
    pub fn needs_migration(&self) -> Option<u32> {
        let v = self.header().layout_version();
        (v != LAYOUT_VERSION).then_some(v)
    }

    /// Migrates an older layout to this one, in place (read-write segments only, by the
    /// HAM taking it over). Returns the layout it was.
    pub fn migrate(&self) -> Result<Option<u32>, SegmentError> {
        let Some(from) = self.needs_migration() else {
            return Ok(None);
        };
        if self.access != Access::ReadWrite {
            return Err(io_err(&self.name, "migrate")(io::Error::from(
                io::ErrorKind::PermissionDenied,
            )));
        }
        self.header().migrate(from);
        Ok(Some(from))
    }

    /// The layout version of the segment `name`, read without checking anything else (for
    /// a binary that may not read it at all: `hamctl upgrade` asks before it hands over).
    pub fn peek_version(name: &str) -> Result<u32, SegmentError> {
        let fd = shm_open(name, shm::OFlags::RDONLY)?;
        let mut b = [0u8; 12];
        rustix::io::pread(&fd, &mut b, 0).map_err(|e| io_err(name, "read")(e.into()))?;
        if u64::from_le_bytes(b[..8].try_into().expect("8 bytes")) != MAGIC {
            return Err(SegmentError::BadMagic {
                name: name.into(),
                found: u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            });
        }
        Ok(u32::from_ne_bytes(b[8..12].try_into().expect("4 bytes")))
    }

    /// Removes the name (mappings stay valid until unmapped). Missing is not an error.
    pub fn unlink(name: &str) -> Result<(), SegmentError> {
        match shm::unlink(name) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(io_err(name, "shm_unlink")(e.into())),
        }
    }

    /// Keeps this mapping for the life of the process: what the kernel must find mapped
    /// until the process exits (the HAM's robust lock) is read through it.
    pub fn into_static(self) -> &'static Segment {
        Box::leak(Box::new(self))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn access(&self) -> Access {
        self.access
    }

    pub fn header(&self) -> &Header {
        // At least a header long, page-aligned: checked in `open`, sized in `create`.
        crate::shm::view(&self.map, 0).expect("the segment holds its header")
    }

    /// Slot `index`, or `None` past the capacity. Indices from the segment itself must go
    /// through here, so a corrupt count can never lead a reader off the end.
    pub fn slot(&self, index: SlotIndex) -> Option<&EntitySlot> {
        let SlotIndex(index) = index;
        if index >= self.capacity {
            return None;
        }
        let offset = size_of::<Header>() + index as usize * size_of::<EntitySlot>();
        crate::shm::view(&self.map, offset)
    }

    /// Run slot `index` of the journal, or `None` past its end.
    pub fn run_slot(&self, index: u32) -> Option<&RunSlot> {
        if index >= RUN_SLOTS {
            return None;
        }
        let offset = runs_offset(self.capacity) as usize + index as usize * size_of::<RunSlot>();
        crate::shm::view(&self.map, offset)
    }

    /// The run-time definitions document.
    pub fn defs(&self) -> &Blob {
        let offset = defs_offset(self.capacity) as usize;
        // `open`/`create` checked that `segment_size(capacity)`, which ends with the
        // definitions, fits the mapping.
        crate::shm::view(&self.map, offset).expect("the segment holds its definitions")
    }

    /// Every run in the journal: `(slot, run)`; unreadable slots are returned as errors.
    pub fn runs(&self) -> Vec<(u32, Result<RunRecord, RecordError>)> {
        (0..RUN_SLOTS)
            .filter_map(|i| match self.run_slot(i)?.read_run() {
                Ok(None) => None,
                Ok(Some(r)) => Some((i, Ok(r))),
                Err(e) => Some((i, Err(e))),
            })
            .collect()
    }

    /// Reads every used slot: `(index, record)`; free slots are skipped, unreadable ones are
    /// returned as errors for the caller to report.
    pub fn records(&self) -> Records {
        let count = self.header().entity_count().min(self.capacity);
        (0..count)
            .map(SlotIndex)
            .filter_map(|i| {
                let slot = self.slot(i)?;
                match slot.read() {
                    Ok(None) => None,
                    Ok(Some(r)) => Some((i, Ok(r))),
                    Err(e) => Some((i, Err(e))),
                }
            })
            .collect()
    }
}

/// The only way to write a segment: owned by the HAM of one epoch. Each write first checks
/// that the epoch in the header is still ours, so a fenced HAM can never overwrite the state
/// of the one that replaced it.
pub struct SegmentWriter {
    seg: Segment,
    epoch: u64,
    hook: Option<Hook>,
}

impl SegmentWriter {
    /// Takes ownership of a read-write segment: bumps the epoch (fencing any HAM before),
    /// records this HAM, and migrates an older layout this build reads to its own.
    pub fn take(seg: Segment, pid: i32, start_time: u64) -> Result<Self, SegmentError> {
        if seg.access != Access::ReadWrite {
            return Err(io_err(&seg.name, "take ownership")(io::Error::from(
                io::ErrorKind::PermissionDenied,
            )));
        }
        let epoch = seg.header().next_epoch();
        seg.header().set_ham(pid, start_time);
        seg.migrate()?;
        Ok(Self {
            seg,
            epoch,
            hook: None,
        })
    }

    /// Installs a failpoint hook called between the steps of every publish (tests only).
    pub fn set_hook(&mut self, hook: Option<Hook>) {
        self.hook = hook;
    }

    pub fn segment(&self) -> &Segment {
        &self.seg
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn owned(&self) -> Result<&Header, SegmentError> {
        let h = self.seg.header();
        let current = h.epoch();
        if current != self.epoch {
            return Err(SegmentError::Fenced {
                ours: self.epoch,
                current,
            });
        }
        Ok(h)
    }

    /// Rewrites the header's description of the segment (magic, layout, sizes) if anything
    /// scribbled over it, so that a Guardian or `hamctl` can map it again; `Some(what was
    /// wrong)` when it did. Nothing else in the header is touched.
    pub fn mend_header(&self) -> Result<Option<String>, SegmentError> {
        let h = self.owned()?;
        Ok(h.mend(self.seg.map.len() as u64, self.seg.capacity))
    }

    /// Publishes `rec` into slot `index` and returns the new generation.
    pub fn publish(&self, index: SlotIndex, rec: &EntityRecord) -> Result<u64, SegmentError> {
        let h = self.owned()?;
        let slot = self.seg.slot(index).ok_or(SegmentError::NoSlot {
            index: index.0,
            capacity: self.seg.capacity,
        })?;
        let generation = slot.publish(rec, self.hook);
        if h.entity_count() <= index.0 {
            h.set_entity_count(index.0 + 1);
        }
        Ok(generation)
    }

    /// Publishes run `rec` into journal slot `index`.
    pub fn publish_run(&self, index: u32, rec: &RunRecord) -> Result<u64, SegmentError> {
        self.owned()?;
        let slot = self.seg.run_slot(index).ok_or(SegmentError::NoSlot {
            index,
            capacity: RUN_SLOTS,
        })?;
        Ok(slot.publish_run(rec, self.hook))
    }

    /// Publishes the run-time definitions document.
    pub fn publish_defs(&self, bytes: &[u8]) -> Result<u64, SegmentError> {
        self.owned()?;
        self.seg
            .defs()
            .write(bytes)
            .map_err(|e| SegmentError::Geometry {
                name: self.seg.name.clone(),
                why: e.to_string(),
            })
    }

    /// Frees journal slot `index`.
    pub fn clear_run(&self, index: u32) -> Result<(), SegmentError> {
        self.owned()?;
        if let Some(slot) = self.seg.run_slot(index) {
            slot.clear();
        }
        Ok(())
    }

    /// Frees slot `index`.
    pub fn clear(&self, index: SlotIndex) -> Result<(), SegmentError> {
        self.owned()?;
        if let Some(slot) = self.seg.slot(index) {
            slot.clear();
        }
        Ok(())
    }

    pub fn set_liveness(&self, mono_ns: u64) -> Result<(), SegmentError> {
        self.owned()?.set_liveness(mono_ns);
        Ok(())
    }

    /// Publishes the HAM's earliest deadline (0: none) for its Guardian.
    pub fn set_deadline(&self, mono_ns: u64) -> Result<(), SegmentError> {
        self.owned()?.set_deadline(mono_ns);
        Ok(())
    }

    pub fn set_guardian(&self, pid: i32, start_time: u64) -> Result<(), SegmentError> {
        self.owned()?.set_guardian(pid, start_time);
        Ok(())
    }

    pub fn set_flags(&self, flags: u32) -> Result<(), SegmentError> {
        self.owned()?.set_flags(flags);
        Ok(())
    }

    /// Records that a stop was asked for (before anything is stopped).
    pub fn set_stop_intent(&self) -> Result<(), SegmentError> {
        let h = self.owned()?;
        h.set_flags(h.flags() | FLAG_STOP_INTENT);
        Ok(())
    }

    /// Stores the log verbosity (kept as level + 1, so 0 means "never set").
    pub fn set_verbosity(&self, level: u32) -> Result<(), SegmentError> {
        self.owned()?.set_verbosity(u64::from(level) + 1);
        Ok(())
    }

    pub fn set_client_key(&self, key: [u64; 2]) -> Result<(), SegmentError> {
        self.owned()?.set_client_key(key);
        Ok(())
    }

    /// Records the ring consumer's position and counts (one A/B record: a writer killed
    /// anywhere in it leaves the previous record).
    pub fn set_ring_state(&self, rec: crate::client::RingRecord) -> Result<(), SegmentError> {
        self.owned()?.publish_ring_state(rec, self.hook);
        Ok(())
    }

    pub fn set_exit_sources(&self, bits: u32) -> Result<(), SegmentError> {
        self.owned()?.set_exit_sources(bits);
        Ok(())
    }

    /// Counts one refusal or drop by a limit (`layout::LIMIT_*`).
    pub fn bump_limit(&self, which: usize) -> Result<(), SegmentError> {
        self.owned()?.bump_limit(which);
        Ok(())
    }

    /// Records the cluster lease and its fence deadline (`Header::fence`).
    pub fn set_fence(&self, lease: u64, at: u64) -> Result<(), SegmentError> {
        self.owned()?.set_fence(lease, at);
        Ok(())
    }

    pub fn bump_ham_failures(&self) -> Result<(), SegmentError> {
        self.owned()?.bump_ham_failures();
        Ok(())
    }

    pub fn bump_guardian_failures(&self) -> Result<(), SegmentError> {
        self.owned()?.bump_guardian_failures();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::EntityState;

    fn unique(tag: &str) -> String {
        format!("/ham-core-test-{tag}-{}", std::process::id())
    }

    struct Unlink(String);
    impl Drop for Unlink {
        fn drop(&mut self) {
            let _ = Segment::unlink(&self.0);
        }
    }

    #[test]
    fn create_write_and_attach_read_only() {
        let name = unique("rw");
        let _guard = Unlink(name.clone());
        let seg = Segment::create(&name, 8, 1).unwrap();
        let w = SegmentWriter::take(seg, 1234, 77).unwrap();
        assert_eq!(w.epoch(), 1);
        let mut rec = EntityRecord::new("web");
        rec.state = EntityState::Running;
        rec.pid = 99;
        w.publish(SlotIndex(3), &rec).unwrap();

        let ro = Segment::open(&name, Access::ReadOnly).unwrap();
        assert_eq!(ro.capacity(), 8);
        let snap = ro.header().snapshot();
        assert_eq!((snap.epoch, snap.ham_pid, snap.entity_count), (1, 1234, 4));
        let recs = ro.records();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].0, SlotIndex(3));
        assert_eq!(recs[0].1.as_ref().unwrap().pid, 99);
        assert!(ro.slot(SlotIndex(8)).is_none());
        assert!(matches!(
            Segment::create(&name, 8, 1),
            Err(SegmentError::Exists { .. })
        ));
    }

    #[test]
    fn a_second_owner_fences_the_first() {
        let name = unique("fence");
        let _guard = Unlink(name.clone());
        let first = SegmentWriter::take(Segment::create(&name, 2, 1).unwrap(), 1, 1).unwrap();
        let second =
            SegmentWriter::take(Segment::open(&name, Access::ReadWrite).unwrap(), 2, 2).unwrap();
        assert_eq!(second.epoch(), 2);
        let rec = EntityRecord::new("a");
        assert!(matches!(
            first.publish(SlotIndex(0), &rec),
            Err(SegmentError::Fenced {
                ours: 1,
                current: 2
            })
        ));
        assert!(second.publish(SlotIndex(0), &rec).is_ok());
    }

    #[test]
    fn the_owner_mends_a_scribbled_header_and_only_that() {
        use std::os::unix::fs::FileExt;
        let name = unique("mend");
        let _guard = Unlink(name.clone());
        let w = SegmentWriter::take(Segment::create(&name, 4, 7).unwrap(), 1, 1).unwrap();
        let mut rec = EntityRecord::new("app");
        rec.pid = 42;
        w.publish(SlotIndex(1), &rec).unwrap();
        assert_eq!(
            w.mend_header().unwrap(),
            None,
            "an intact header is left alone"
        );
        let file = File::from(shm_open(&name, shm::OFlags::RDWR).unwrap());
        // The magic and the capacity (offset 24) scribbled over.
        file.write_all_at(&[0xA5; 8], 0).unwrap();
        file.write_all_at(&[0xA5; 4], 24).unwrap();
        assert!(matches!(
            Segment::open(&name, Access::ReadOnly),
            Err(SegmentError::BadMagic { .. })
        ));
        let what = w.mend_header().unwrap().expect("scribbled");
        assert!(
            what.contains("magic") && what.contains("capacity"),
            "{what}"
        );
        let ro = Segment::open(&name, Access::ReadOnly).unwrap();
        assert_eq!(ro.capacity(), 4);
        let snap = ro.header().snapshot();
        assert_eq!((snap.epoch, snap.ham_pid, snap.created_unix_ns), (1, 1, 7));
        assert_eq!(ro.records()[0].1.as_ref().unwrap().pid, 42);
        // A fenced owner mends nothing.
        let _second = SegmentWriter::take(Segment::open(&name, Access::ReadWrite).unwrap(), 2, 2);
        file.write_all_at(&[0xA5; 8], 0).unwrap();
        assert!(matches!(w.mend_header(), Err(SegmentError::Fenced { .. })));
    }

    #[test]
    fn attach_rejects_foreign_objects() {
        let name = unique("foreign");
        let _guard = Unlink(name.clone());
        let fd = shm::open(
            name.as_str(),
            shm::OFlags::CREATE | shm::OFlags::RDWR,
            Mode::from_raw_mode(0o600),
        )
        .unwrap();
        let file = File::from(fd);
        file.set_len(8192).unwrap();
        assert!(matches!(
            Segment::open(&name, Access::ReadOnly),
            Err(SegmentError::BadMagic { found: 0, .. })
        ));
        file.set_len(16).unwrap();
        assert!(matches!(
            Segment::open(&name, Access::ReadOnly),
            Err(SegmentError::Geometry { .. })
        ));
        assert!(matches!(
            Segment::open("/ham-core-test-missing", Access::ReadOnly),
            Err(SegmentError::NotFound { .. })
        ));
    }
}
