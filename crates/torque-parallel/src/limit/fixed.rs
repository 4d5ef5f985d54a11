use super::{Algorithm, Sample};

/// A limit that never moves: a semaphore with the limiter's bookkeeping.
///
/// The baseline every adaptive algorithm is compared against.
///
/// # Example
/// ```
/// use torque_parallel::limit::{Algorithm, Fixed};
///
/// assert_eq!(Fixed::new(16).initial_limit(), 16);
/// assert_eq!(Fixed::new(0).initial_limit(), 1, "the minimum limit is 1");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixed {
    limit: usize,
}

impl Fixed {
    /// A fixed limit of `limit` requests in flight (0 is raised to 1: a
    /// limiter that admits nothing would deadlock its users).
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
        }
    }
}

impl Algorithm for Fixed {
    fn initial_limit(&self) -> usize {
        self.limit
    }

    fn update(&mut self, _sample: &Sample) -> usize {
        self.limit
    }
}
