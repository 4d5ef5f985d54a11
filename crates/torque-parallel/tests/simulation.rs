//! The limiters against the simulated backend of `tests/sim`, on tokio's
//! paused clock: convergence, back-off and recovery after capacity steps.

mod sim;

use sim::{Scenario, run};
use torque_parallel::limit::Adaptive;

#[test]
fn debug_trace() {
    let mut s = Scenario::closed(24, 1);
    s.thrash = true;
    s.duration = std::time::Duration::from_secs(10);
    let r = run(&s, Adaptive::default());
    println!("{:?}", r.limits);
    println!("{} {:?}", r.throughput, r.p99);
}
