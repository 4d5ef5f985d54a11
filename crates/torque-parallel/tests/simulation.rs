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

#[test]
fn debug_landscape() {
    for l in [20usize, 22, 24, 25, 26, 27, 28, 29, 30, 32, 36] {
        let mut s = Scenario::closed(24, 1);
        s.thrash = true;
        s.open_loop = Some(1.3);
        let r = run(&s, torque_parallel::limit::Fixed::new(l));
        let mut c = Scenario::closed(24, 1);
        c.thrash = true;
        let rc = run(&c, torque_parallel::limit::Fixed::new(l));
        println!("L={l} open={:.0} p99={:?} closed={:.0} p99={:?}", r.throughput, r.p99, rc.throughput, rc.p99);
    }
}
