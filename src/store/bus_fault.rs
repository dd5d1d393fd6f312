//! Surviving a store file that shrinks under its mapping.
//!
//! A store keeps its file mapped for as long as it is open. If anyone with the rights to do it
//! truncates the file meanwhile, the next touch of a page past the new end raises SIGBUS, whose
//! default action kills the daemon and leaves its socket and cgroups behind. This module installs
//! one SIGBUS handler for the process, the first time a store maps its file. Each store registers
//! its mapping's address range in a small fixed table before using it. When a fault lands in a
//! registered range, the handler maps an anonymous zero page over the faulting page, so the access
//! is retried and reads zeros, and marks that range damaged; the store sees the mark at its next
//! operation and stops using the file. Zeros never pass as data: a record starts with a magic and
//! carries a CRC-32, and a zeroed index slot reads as empty. A fault anywhere else is not ours:
//! the default action is restored and the signal raised again, so real bugs still crash.
//!
//! The handler is async-signal-safe: it allocates nothing, takes no lock and logs nothing. The
//! table is lock-free; each entry is guarded by a sequence number, odd while the entry changes,
//! so the handler never trusts a range that was being written while it read it.

use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};

/// How many mappings can be guarded at once; precogd has two stores, tests open a few more.
const RANGES: usize = 64;
/// `si_code` of a SIGBUS for an address the file no longer backs (Linux `BUS_ADRERR`).
const BUS_ADRERR: libc::c_int = 2;

/// One registered mapping: `[start, end)` and whether a fault has hit it.
struct GuardedRange {
    /// Taken by a live [`Guard`].
    claimed: AtomicBool,
    /// Odd while `start` and `end` are being changed.
    seq: AtomicUsize,
    start: AtomicUsize,
    end: AtomicUsize,
    damaged: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: GuardedRange = GuardedRange {
    claimed: AtomicBool::new(false),
    seq: AtomicUsize::new(0),
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    damaged: AtomicBool::new(false),
};

static TABLE: [GuardedRange; RANGES] = [EMPTY; RANGES];
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);
static INSTALL: Once = Once::new();

/// A mapping's entry in the table, removed when dropped. Drop it before unmapping, so an address
/// that is later reused for something else is never claimed.
#[derive(Debug)]
pub struct Guard {
    entry: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("every one of the {RANGES} guarded mapping entries is taken")]
    TableFull,
    #[error("could not install the SIGBUS handler")]
    Install(#[source] std::io::Error),
}

impl Guard {
    /// Registers `[start, start + len)` and makes sure the handler is installed. Call it before
    /// the mapping is first touched.
    pub fn register(start: usize, len: usize) -> Result<Guard, GuardError> {
        install()?;
        let entry = TABLE
            .iter()
            .position(|r| {
                r.claimed
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            })
            .ok_or(GuardError::TableFull)?;
        set_range(&TABLE[entry], start, start.saturating_add(len));
        Ok(Guard { entry })
    }

    /// Whether a fault has hit the mapping since it was registered; one relaxed load.
    pub fn damaged(&self) -> bool {
        TABLE[self.entry].damaged.load(Ordering::Relaxed)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let range = &TABLE[self.entry];
        set_range(range, 0, 0);
        range.claimed.store(false, Ordering::Release);
    }
}

/// Writes a range under its sequence number and clears its damage mark.
fn set_range(range: &GuardedRange, start: usize, end: usize) {
    range.seq.fetch_add(1, Ordering::AcqRel);
    fence(Ordering::Release);
    range.start.store(start, Ordering::Relaxed);
    range.end.store(end, Ordering::Relaxed);
    range.damaged.store(false, Ordering::Relaxed);
    range.seq.fetch_add(1, Ordering::Release);
}

/// The entry whose range holds `addr`, read consistently; safe to call from the handler.
fn entry_holding(addr: usize) -> Option<&'static GuardedRange> {
    TABLE.iter().find(|range| {
        let before = range.seq.load(Ordering::Acquire);
        if before % 2 == 1 {
            return false;
        }
        let (start, end) = (
            range.start.load(Ordering::Relaxed),
            range.end.load(Ordering::Relaxed),
        );
        fence(Ordering::Acquire);
        let after = range.seq.load(Ordering::Relaxed);
        before == after && start != 0 && start <= addr && addr < end
    })
}

fn install() -> Result<(), GuardError> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        // SAFETY: sysconf only reads a constant of the running system.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        PAGE_SIZE.store(usize::try_from(page).unwrap_or(4096), Ordering::Relaxed);

        // SAFETY: an all-zero sigaction is a valid value to fill in; `on_sigbus` has the
        // three-argument signature SA_SIGINFO asks for and is async-signal-safe.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            result = Err(GuardError::Install(std::io::Error::last_os_error()));
        }
    });
    result
}

extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for a handler installed with SA_SIGINFO; for
    // SIGBUS `si_addr` is the faulting address.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    if code == BUS_ADRERR
        && let Some(range) = entry_holding(addr)
        && zero_page_over(addr)
    {
        range.damaged.store(true, Ordering::Relaxed);
        return;
    }

    // SAFETY: resetting a disposition and raising a signal are async-signal-safe; the signal
    // stays blocked until this handler returns and is then delivered with its default action.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

/// Puts a private anonymous zero page where `addr` is, so the faulting access can be retried.
fn zero_page_over(addr: usize) -> bool {
    let page = PAGE_SIZE.load(Ordering::Relaxed);
    let start = addr & !(page - 1);
    // SAFETY: the page lies inside a mapping a live store registered and owns; replacing it with
    // a zero page only changes what that store reads, and its records reject zeros.
    let mapped = unsafe {
        libc::mmap(
            start as *mut libc::c_void,
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_FIXED | libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
            -1,
            0,
        )
    };
    mapped != libc::MAP_FAILED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_registered_addresses_are_claimed() {
        let guard = Guard::register(0x7000_0000, 0x1000).unwrap();
        assert!(entry_holding(0x7000_0000).is_some());
        assert!(entry_holding(0x7000_0fff).is_some());
        assert!(entry_holding(0x7000_1000).is_none());
        assert!(entry_holding(0x6fff_ffff).is_none());
        assert!(entry_holding(0).is_none());
        assert!(!guard.damaged());

        drop(guard);
        assert!(entry_holding(0x7000_0000).is_none());
    }
}
