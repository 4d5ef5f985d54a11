//! With the `metrics` feature, a closed pool's gauges end at what it holds:
//! its idle connections closed at once, and those still checked out when
//! they come back. The maintenance task that publishes them used to stop at
//! `close()`, leaving the last values (connections long gone) for ever.
#![cfg(feature = "metrics")]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Fake, wait_until};
use metrics::{
    Counter, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use torque_pool::Pool;

/// The last value of every gauge, by name and labels.
#[derive(Default, Clone)]
struct Gauges(Arc<Mutex<HashMap<String, f64>>>);

struct One(Arc<Mutex<HashMap<String, f64>>>, String);

impl GaugeFn for One {
    fn increment(&self, value: f64) {
        *self.0.lock().unwrap().entry(self.1.clone()).or_default() += value;
    }
    fn decrement(&self, value: f64) {
        *self.0.lock().unwrap().entry(self.1.clone()).or_default() -= value;
    }
    fn set(&self, value: f64) {
        self.0.lock().unwrap().insert(self.1.clone(), value);
    }
}

impl Recorder for Gauges {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let mut name = key.name().to_string();
        for l in key.labels() {
            name.push_str(&format!(",{}={}", l.key(), l.value()));
        }
        Gauge::from_arc(Arc::new(One(Arc::clone(&self.0), name)))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

impl Gauges {
    fn get(&self, name: &str) -> Option<f64> {
        self.0.lock().unwrap().get(name).copied()
    }
}

#[tokio::test(start_paused = true)]
async fn a_closed_pools_gauges_drop_to_what_it_still_holds() {
    let gauges = Gauges::default();
    metrics::set_global_recorder(gauges.clone()).expect("the only recorder of this binary");
    let fake = Fake::default();
    let pool = Pool::builder(fake.clone())
        .max_size(4)
        .min_idle(3)
        .keepalive_interval(None)
        .max_lifetime(None)
        .idle_timeout(None)
        .seed(1)
        .build()
        .unwrap();
    let held = pool.get().await.unwrap();
    wait_until(Duration::from_secs(5), || {
        gauges.get("torque_pool_size") == Some(4.0)
            && gauges.get("torque_pool_connections,state=in_use") == Some(1.0)
    })
    .await;
    pool.close();
    // The idle ones are closed at once...
    wait_until(Duration::from_secs(5), || {
        gauges.get("torque_pool_size") == Some(1.0)
            && gauges.get("torque_pool_connections,state=idle") == Some(0.0)
    })
    .await;
    // ...and the one still out when it comes back.
    drop(held);
    wait_until(Duration::from_secs(5), || {
        gauges.get("torque_pool_size") == Some(0.0)
            && gauges.get("torque_pool_connections,state=in_use") == Some(0.0)
    })
    .await;
}
