//! Write buffers reused from one object to the next.
//!
//! A fill writes objects of a few megabytes each, gathering up to a megabyte before each
//! write. Allocating that megabyte afresh per object cost the daemon a page fault (and the
//! kernel's zeroing) per 4 KiB touched, and its release a `madvise` or `munmap`, which takes
//! the address space's lock that viewers' large-folio mappings also take: a third of the
//! background runtime's CPU during a fill, and the delays viewers saw from it. Buffers given
//! back are kept (up to a bound) with their pages mapped, and handed out again as they are.

use std::sync::Mutex;

/// A bounded free list of byte buffers of at least one capacity.
#[derive(Debug)]
pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    capacity: usize,
    keep: usize,
}

impl BufferPool {
    /// A pool of buffers of at least `capacity` bytes that keeps at most `keep` of them
    /// (so at most `keep * capacity` bytes stay allocated while nothing is written).
    pub const fn new(capacity: usize, keep: usize) -> BufferPool {
        BufferPool {
            free: Mutex::new(Vec::new()),
            capacity,
            keep,
        }
    }

    /// A buffer with room for the pool's capacity. One given back keeps its length and its
    /// old bytes (no zeroing): a user reads only what it wrote since.
    pub fn take(&'static self) -> PooledBuffer {
        let kept = match self.free.lock() {
            Ok(mut free) => free.pop(),
            Err(poisoned) => poisoned.into_inner().pop(),
        };
        PooledBuffer {
            pool: self,
            buffer: kept.unwrap_or_else(|| Vec::with_capacity(self.capacity)),
        }
    }

    /// An empty stand-in holding no memory, for a buffer that is away (being written on
    /// another thread); dropped, it is not kept.
    pub fn placeholder(&'static self) -> PooledBuffer {
        PooledBuffer {
            pool: self,
            buffer: Vec::new(),
        }
    }

    fn give_back(&self, buffer: Vec<u8>) {
        if buffer.capacity() < self.capacity {
            return;
        }
        let mut free = match self.free.lock() {
            Ok(free) => free,
            Err(poisoned) => poisoned.into_inner(),
        };
        if free.len() < self.keep {
            free.push(buffer);
        }
    }

    /// Buffers kept for reuse now.
    pub fn kept(&self) -> usize {
        match self.free.lock() {
            Ok(free) => free.len(),
            Err(poisoned) => poisoned.into_inner().len(),
        }
    }
}

/// A buffer from a [`BufferPool`], given back when dropped.
pub struct PooledBuffer {
    pool: &'static BufferPool,
    buffer: Vec<u8>,
}

impl std::fmt::Debug for PooledBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBuffer")
            .field("len", &self.buffer.len())
            .field("capacity", &self.buffer.capacity())
            .finish()
    }
}

impl std::ops::Deref for PooledBuffer {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.buffer
    }
}

impl std::ops::DerefMut for PooledBuffer {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buffer
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buffer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_handed_out_again_with_its_memory() {
        static POOL: BufferPool = BufferPool::new(4096, 2);
        let mut first = POOL.take();
        assert!(first.capacity() >= 4096);
        first.extend_from_slice(b"old bytes");
        let address = first.as_ptr();
        drop(first);
        assert_eq!(POOL.kept(), 1);
        let again = POOL.take();
        assert_eq!(
            again.as_ptr(),
            address,
            "the same allocation, not a fresh one"
        );
        assert_eq!(POOL.kept(), 0);
    }

    #[test]
    fn the_pool_keeps_no_more_than_its_bound_nor_shrunken_buffers() {
        static POOL: BufferPool = BufferPool::new(4096, 2);
        let taken: Vec<_> = (0..5).map(|_| POOL.take()).collect();
        drop(taken);
        assert_eq!(POOL.kept(), 2);
        let mut shrunk = POOL.take();
        *shrunk = Vec::new();
        drop(shrunk);
        assert_eq!(POOL.kept(), 1, "a buffer under the capacity is not kept");
    }
}
