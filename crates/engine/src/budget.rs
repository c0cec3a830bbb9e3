//! Backpressure by bytes in flight, shared by every backup of an engine.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// A counting semaphore over bytes. Readers acquire a chunk's size before handing it to the
/// worker pool; the writer releases it once the chunk is written. Several concurrent backups
/// share one budget, so memory is bounded by the budget however many run.
pub struct ByteBudget {
    capacity: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

impl ByteBudget {
    /// A budget of `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        ByteBudget {
            capacity,
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// Waits until `n` bytes fit (a request larger than the capacity waits for an empty budget).
    /// Returns false if `abort` was raised while waiting.
    pub fn acquire(&self, n: u64, abort: &AtomicBool) -> bool {
        let n = n.min(self.capacity);
        let mut used = self.used.lock();
        while *used + n > self.capacity {
            if abort.load(Ordering::Relaxed) {
                return false;
            }
            self.freed.wait_for(&mut used, Duration::from_millis(20));
        }
        *used += n;
        true
    }

    /// Gives back `n` bytes.
    pub fn release(&self, n: u64) {
        let n = n.min(self.capacity);
        let mut used = self.used.lock();
        *used = used.saturating_sub(n);
        drop(used);
        self.freed.notify_all();
    }

    /// Bytes currently in flight.
    pub fn in_flight(&self) -> u64 {
        *self.used.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn blocks_until_released_and_honours_abort() {
        let b = Arc::new(ByteBudget::new(100));
        let no = AtomicBool::new(false);
        assert!(b.acquire(60, &no));
        let b2 = b.clone();
        let t = std::thread::spawn(move || {
            let no = AtomicBool::new(false);
            b2.acquire(60, &no)
        });
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(b.in_flight(), 60);
        b.release(60);
        assert!(t.join().unwrap());
        let yes = AtomicBool::new(true);
        assert!(!b.acquire(60, &yes));
    }
}
