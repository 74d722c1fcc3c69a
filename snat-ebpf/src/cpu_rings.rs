//! The reader's side of the event stream: one ring of events per CPU, in two eBPF array
//! maps mapped into this process's memory, and a small BPF ring buffer whose records only
//! wake the reader.
//!
//! The program on CPU `c` writes its events into its own ring (entries
//! `c << shift .. (c + 1) << shift` of `cpu_events`) and publishes each by incrementing
//! `head` in entry `c` of `cpu_pos`. The reader copies the events between its `tail` and
//! `head`, then stores the new `tail`; the program drops (and counts) an event when its
//! ring holds a whole ring of unread ones. Nothing is locked, and no two CPUs write the
//! same cache line: a BPF ring buffer takes one lock shared by all CPUs for every record.
//! When a ring fills up to the wakeup threshold, its CPU writes one record into the
//! `wakeups` ring buffer, which makes `poll` on it return; otherwise the reader drains on
//! its timer.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use aya::Ebpf;
use aya::maps::{Map, MapData, RingBuf};

use crate::abi::{self, RawEvent, RingPos};
use crate::error::Error;
use crate::tracer::{map_err, map_missing, page_size};

/// The smallest ring a CPU gets, in events.
pub(crate) const MIN_SLOTS: u32 = 16;

/// The rings' total size when none is given: 4 MiB, and at least 256 KiB per CPU, so that
/// a CPU's ring absorbs a burst of about 2,700 events however many CPUs share the total.
pub(crate) fn default_ring_bytes(cpus: usize) -> u64 {
    (4u64 << 20).max(cpus as u64 * (256 << 10))
}

/// Slots per CPU (a power of two, at least [`MIN_SLOTS`]) for `ring_bytes` of rings shared
/// out among `cpus` CPUs, and the wakeup threshold: a CPU wakes the reader when its ring
/// holds `wakeup_bytes` of events, or half a ring if that is less.
pub(crate) fn sizing(ring_bytes: u64, wakeup_bytes: u64, cpus: usize) -> (u32, u32) {
    let event = size_of::<RawEvent>() as u64;
    let cpus = cpus.max(1) as u64;
    let per_cpu = (ring_bytes / event / cpus).clamp(u64::from(MIN_SLOTS), 1 << 24);
    // The largest power of two not above per_cpu.
    let slots = 1u32 << (63 - per_cpu.leading_zeros());
    let wakeup = (wakeup_bytes / event).clamp(1, u64::from(slots / 2));
    (slots, wakeup as u32)
}

/// A shared, writable mapping of an mmapable array map's values.
struct Mapping {
    ptr: *mut u8,
    len: usize,
    /// Keeps the map's fd open as long as the mapping is used.
    _map: MapData,
}

// SAFETY: the mapping is memory shared with the kernel; this process reads it through
// atomics and volatile copies, and writes it only from `&mut CpuRings`.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(ebpf: &mut Ebpf, name: &'static str, bytes: usize) -> Result<Mapping, Error> {
        let map = ebpf.take_map(name).ok_or_else(|| map_missing(name))?;
        let Map::Array(data) = map else {
            return Err(Error::Map {
                name,
                what: "is not an array map".into(),
                source: None,
            });
        };
        let len = bytes.next_multiple_of(page_size() as usize);
        // SAFETY: a shared mapping of an mmapable array map's fd, of at most its value
        // area rounded up to pages (what the kernel allows); the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::Io {
                what: "mmap of the per-CPU event rings",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
            _map: data,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, which nothing uses any more.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The per-CPU event rings of a loaded program in stream mode.
pub(crate) struct CpuRings {
    pos: Mapping,
    events: Mapping,
    shift: u32,
    /// What this reader has consumed of each CPU's ring (it alone writes `tail`), by CPU.
    tails: Vec<u64>,
    wake: RingBuf<MapData>,
    batch: Vec<RawEvent>,
}

impl CpuRings {
    /// Map the rings of a program loaded with `cpus` rings of `slots` events.
    pub(crate) fn take(ebpf: &mut Ebpf, cpus: usize, slots: u32) -> Result<CpuRings, Error> {
        let pos = Mapping::new(ebpf, abi::MAP_CPU_POS, cpus * size_of::<RingPos>())?;
        let events = Mapping::new(ebpf, abi::MAP_CPU_EVENTS, cpus * slots as usize * size_of::<RawEvent>())?;
        let map = ebpf
            .take_map(abi::MAP_WAKEUPS)
            .ok_or_else(|| map_missing(abi::MAP_WAKEUPS))?;
        let wake = RingBuf::try_from(map).map_err(|e| map_err(abi::MAP_WAKEUPS, e))?;
        Ok(CpuRings {
            pos,
            events,
            shift: slots.trailing_zeros(),
            tails: vec![0; cpus],
            wake,
            batch: Vec::new(),
        })
    }

    /// The fd to poll for wakeups.
    pub(crate) fn wake_fd(&self) -> RawFd {
        self.wake.as_fd().as_raw_fd()
    }

    /// The `head` and `tail` of CPU `cpu`'s ring.
    fn positions(pos: &Mapping, cpu: usize) -> (&AtomicU64, &AtomicU64) {
        debug_assert!((cpu + 1) * size_of::<RingPos>() <= pos.len);
        let base = pos.ptr.wrapping_add(cpu * size_of::<RingPos>());
        // SAFETY: entry `cpu` lies inside the mapping (cpus entries were mapped), its
        // fields are 8-byte aligned (page-aligned base, 128-byte entries), and the kernel
        // accesses them atomically too.
        unsafe {
            (
                AtomicU64::from_ptr(base.add(std::mem::offset_of!(RingPos, head)).cast()),
                AtomicU64::from_ptr(base.add(std::mem::offset_of!(RingPos, tail)).cast()),
            )
        }
    }

    /// Copy out every event waiting in every CPU's ring and pass them to `out` in time
    /// order (each CPU's events are in order; this merges the CPUs).
    pub(crate) fn drain(&mut self, out: &mut dyn FnMut(&RawEvent)) {
        while self.wake.next().is_some() {}
        let slots = 1u64 << self.shift;
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();
        for cpu in 0..self.tails.len() {
            let (head_at, tail_at) = Self::positions(&self.pos, cpu);
            // Acquire: the events up to head were written before head was.
            let head = head_at.load(Ordering::Acquire);
            let tail = self.tails[cpu];
            // The program never runs more than a ring ahead of the reader.
            let from = head.saturating_sub(slots).max(tail);
            for n in from..head {
                let slot = (cpu << self.shift) + (n & (slots - 1)) as usize;
                let at = self.events.ptr.wrapping_add(slot * size_of::<RawEvent>());
                // SAFETY: the slot lies inside the mapping (cpus << shift slots were
                // mapped), is 8-byte aligned, and RawEvent is Pod; the program does not
                // write it again before `tail` passes it.
                batch.push(unsafe { std::ptr::read_volatile(at.cast::<RawEvent>()) });
            }
            if head != tail {
                self.tails[cpu] = head;
                // Release: the copies above are done before the program may reuse the slots.
                tail_at.store(head, Ordering::Release);
            }
        }
        batch.sort_by_key(|e| e.ts_ns);
        for e in &batch {
            out(e);
        }
        self.batch = batch;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_are_shared_out_among_cpus_in_powers_of_two() {
        // 4 MiB over 2 CPUs: 21,845 events each, rounded down to 16,384; a wakeup when
        // 256 KiB (2,730 events) wait on one CPU.
        assert_eq!(sizing(4 << 20, 256 << 10, 2), (16384, 2730));
        // Many CPUs: never below MIN_SLOTS, and wakeups at half a ring at most.
        assert_eq!(sizing(4096, 256 << 10, 64), (MIN_SLOTS, MIN_SLOTS / 2));
        // A wakeup threshold below one event wakes at every event.
        assert_eq!(sizing(1 << 20, 1, 4), (2048, 1));
        assert_eq!(sizing(1 << 20, 64 << 10, 2), (4096, 682));
    }

    #[test]
    fn the_default_grows_with_the_cpus() {
        assert_eq!(default_ring_bytes(2), 4 << 20);
        assert_eq!(default_ring_bytes(16), 4 << 20);
        assert_eq!(default_ring_bytes(96), 24 << 20);
        // 96 CPUs: 2,730 events each, 2,048 slots; wakeups at half a ring.
        assert_eq!(sizing(default_ring_bytes(96), 256 << 10, 96), (2048, 1024));
    }
}
