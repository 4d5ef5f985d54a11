//! The no-op connection manager the pool benchmarks share (included with
//! `#[path]` by `benches/pool.rs` and the pool examples: the peers are
//! dev-dependencies, which the package's library cannot use).

/// A manager whose connections are numbers: measures the pool alone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Noop;

impl torque_pool::Manager for Noop {
    type Connection = u64;
    type Error = std::io::Error;
    async fn create(&self) -> Result<u64, std::io::Error> {
        Ok(0)
    }
    async fn check(&self, _: &mut u64) -> Result<(), std::io::Error> {
        Ok(())
    }
    fn is_broken(&self, _: &u64) -> bool {
        false
    }
}

impl deadpool::managed::Manager for Noop {
    type Type = u64;
    type Error = std::io::Error;
    async fn create(&self) -> Result<u64, std::io::Error> {
        Ok(0)
    }
    async fn recycle(
        &self,
        _: &mut u64,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<std::io::Error> {
        Ok(())
    }
}

impl bb8::ManageConnection for Noop {
    type Connection = u64;
    type Error = std::io::Error;
    async fn connect(&self) -> Result<u64, std::io::Error> {
        Ok(0)
    }
    async fn is_valid(&self, _: &mut u64) -> Result<(), std::io::Error> {
        Ok(())
    }
    fn has_broken(&self, _: &mut u64) -> bool {
        false
    }
}
