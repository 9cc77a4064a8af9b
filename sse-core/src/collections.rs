//! Maps and queues that give their memory back after a spike.
//!
//! A `HashMap` keeps its capacity when entries leave: a map of open connections, sessions or
//! client addresses that once held 100 000 entries keeps room for 100 000 for as long as the
//! process lives, whatever it holds now. The hub, the stores and the middleware call
//! [`shrink_when_sparse`] after removing entries, so memory returns to its baseline once a
//! wave of clients has gone; custom stores with maps of their own can do the same.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};

/// Below this capacity a map is left as it is: shrinking it would save little.
const SMALL: usize = 64;

/// Shrinks `map` to twice its length when it uses a quarter of its capacity or less.
///
/// Call it after removing entries. Each shrink rehashes the entries left, and the next one
/// comes only after half of them have gone, so the cost per removal stays constant; a map
/// that fills up again grows as usual.
///
/// ```
/// use std::collections::{HashMap, VecDeque};
/// use resumable_sse_core::collections::shrink_when_sparse;
///
/// let mut open: HashMap<u32, &str> = (0..10_000).map(|i| (i, "connection")).collect();
/// let peak = open.capacity();
/// open.retain(|&i, _| i < 10);
/// shrink_when_sparse(&mut open);
/// assert!(open.capacity() < peak / 100);
/// assert_eq!(open.len(), 10);
/// ```
pub fn shrink_when_sparse<K: Eq + Hash, V, S: BuildHasher>(map: &mut HashMap<K, V, S>) {
    let capacity = map.capacity();
    if capacity > SMALL && map.len() <= capacity / 4 {
        map.shrink_to(map.len() * 2);
    }
}

/// [`shrink_when_sparse`] for a queue: shrinks `deque` to twice its length when it uses a
/// quarter of its capacity or less (and more than 64).
///
/// ```
/// use std::collections::VecDeque;
/// use resumable_sse_core::collections::shrink_deque_when_sparse;
///
/// let mut queue: VecDeque<u32> = (0..10_000).collect();
/// queue.drain(..9_990);
/// shrink_deque_when_sparse(&mut queue);
/// assert!(queue.capacity() < 100);
/// assert_eq!(queue.len(), 10);
/// ```
pub fn shrink_deque_when_sparse<T>(deque: &mut VecDeque<T>) {
    let capacity = deque.capacity();
    if capacity > SMALL && deque.len() <= capacity / 4 {
        deque.shrink_to(deque.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_map_keeps_its_room() {
        let mut map: HashMap<u32, ()> = (0..40).map(|i| (i, ())).collect();
        let capacity = map.capacity();
        map.clear();
        shrink_when_sparse(&mut map);
        assert_eq!(map.capacity(), capacity);
    }

    #[test]
    fn a_map_emptied_one_entry_at_a_time_shrinks_as_it_goes() {
        let mut map: HashMap<u32, ()> = (0..4096).map(|i| (i, ())).collect();
        let mut shrinks = 0;
        for i in 0..4096 {
            map.remove(&i);
            let before = map.capacity();
            shrink_when_sparse(&mut map);
            if map.capacity() < before {
                shrinks += 1;
            }
            assert!(
                map.capacity() <= SMALL.max(map.len() * 8),
                "{} entries in room for {}",
                map.len(),
                map.capacity()
            );
        }
        // Each shrink comes after half of what was left has gone.
        assert!(shrinks <= 12, "{shrinks} shrinks");
    }
}
