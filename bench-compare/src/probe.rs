//! Physical limits of this machine, to read the engines' figures against:
//! - the latency of one dependent random memory access (pointer chasing over 1 GiB, one
//!   cache line per hop, 4 KiB pages: a cache miss plus, usually, a TLB miss);
//! - the latency of making one dirty page durable with msync(MS_SYNC), on a file in the
//!   same temp dir as the stores (and, for reference, pwrite + fdatasync of one page).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::Rng;
use crate::results::median;

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Probe {
    /// Nanoseconds per dependent random access over a 1 GiB buffer (median of 3).
    pub chase_ns: f64,
    /// Microseconds per one-page write + msync(MS_SYNC) (median of the runs).
    pub msync_us: f64,
    /// Microseconds per one-page pwrite + fdatasync (median).
    pub fdatasync_us: f64,
}

const LINE: usize = 64;

pub fn chase_ns(bytes: usize) -> f64 {
    let lines = bytes / LINE;
    // buf[line * 8] holds the index of the next line: one random cycle through every line
    // (Sattolo's algorithm), so the hardware prefetchers cannot guess the next address.
    let mut next: Vec<u32> = (0..lines as u32).collect();
    let mut rng = Rng::new(0xC0FFEE);
    for i in (1..lines).rev() {
        let j = rng.below(i as u64) as usize;
        next.swap(i, j);
    }
    let mut buf = vec![0u64; bytes / 8];
    for (i, &n) in next.iter().enumerate() {
        buf[i * (LINE / 8)] = n as u64 * (LINE / 8) as u64;
    }
    drop(next);
    let hops = 20_000_000usize;
    let mut runs = Vec::new();
    for _ in 0..3 {
        let mut p = 0u64;
        let t = Instant::now();
        for _ in 0..hops {
            p = buf[p as usize];
        }
        let ns = t.elapsed().as_nanos() as f64 / hops as f64;
        std::hint::black_box(p);
        runs.push(ns);
    }
    median(&mut runs)
}

pub fn msync_us(dir: &Path, ops: usize) -> std::io::Result<f64> {
    let path = dir.join("msync-probe");
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
    let len = 1 << 20;
    file.set_len(len as u64)?;
    file.sync_all()?;
    // SAFETY: a plain shared mapping of a file this function owns; unmapped below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let page = 4096;
    let mut lat = Vec::with_capacity(ops);
    for i in 0..ops {
        let off = (i % (len / page)) * page;
        let t = Instant::now();
        // SAFETY: off + 8 <= len, inside the mapping.
        unsafe {
            let p = (map as *mut u8).add(off) as *mut u64;
            p.write_volatile(i as u64 + 1);
            if libc::msync((map as *mut u8).add(off) as *mut libc::c_void, page, libc::MS_SYNC) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        lat.push(t.elapsed().as_nanos() as f64 / 1e3);
    }
    // SAFETY: the mapping made above, not used after this.
    unsafe { libc::munmap(map, len) };
    let m = median(&mut lat);
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(m)
}

pub fn fdatasync_us(dir: &Path, ops: usize) -> std::io::Result<f64> {
    let path = dir.join("fdatasync-probe");
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
    let len = 1u64 << 20;
    file.set_len(len)?;
    file.sync_all()?;
    let page = [7u8; 4096];
    let mut lat = Vec::with_capacity(ops);
    for i in 0..ops {
        let off = (i as u64 * 4096) % len;
        let t = Instant::now();
        file.write_all_at(&page, off)?;
        file.sync_data()?;
        lat.push(t.elapsed().as_nanos() as f64 / 1e3);
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(median(&mut lat))
}

pub fn run(dir: &Path) -> std::io::Result<Probe> {
    std::fs::create_dir_all(dir)?;
    let chase = chase_ns(1 << 30);
    let ms = msync_us(dir, 1000)?;
    let fd = fdatasync_us(dir, 1000)?;
    Ok(Probe { chase_ns: chase, msync_us: ms, fdatasync_us: fd })
}
