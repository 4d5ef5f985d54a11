//! A batch run from inside an item of another batch does not deadlock.

use std::time::Duration;

use torque_parallel::Processor;

mod common;

fn slow_sum(p: &Processor, n: u64) -> u64 {
    let items: Vec<u64> = (0..n).collect();
    p.map_reduce(
        &items,
        |&x| {
            std::thread::sleep(Duration::from_micros(200));
            x
        },
        || 0,
        |a, b| a + b,
    )
    .value
}

#[test]
fn cpu_map_inside_a_parallel_map_on_the_global_pool() {
    let p = Processor::builder().build().unwrap();
    let outer: Vec<u64> = (0..16).collect();
    let out = p.map(&outer, |&o| o + slow_sum(&p, 50));
    for (i, r) in out.iter().enumerate() {
        assert_eq!(*r.as_ref().unwrap(), i as u64 + 1225);
    }
    assert!(p.stats().parallel_runs >= 1);
}

#[test]
fn cpu_map_three_deep_on_a_one_thread_dedicated_pool() {
    let p = Processor::builder().cpu_threads(1).build().unwrap();
    let outer: Vec<u64> = (0..4).collect();
    let out = p.map(&outer, |_| {
        let mid: Vec<u64> = (0..4).collect();
        p.map(&mid, |_| slow_sum(&p, 20))
            .into_iter()
            .map(Result::unwrap)
            .sum::<u64>()
    });
    assert!(out.iter().all(|r| *r.as_ref().unwrap() == 4 * 190));
}

#[test]
fn blocking_map_inside_a_blocking_job_runs_inline() {
    // One thread, queue of one: waiting for room from inside the job would
    // wait forever; the nested batch runs on the job's own thread instead.
    let p = Processor::builder()
        .blocking_threads(1)
        .queue_capacity(1)
        .build()
        .unwrap();
    let inner = p.clone();
    let out = p.blocking().map(vec![10u32, 20], move |x| {
        inner
            .blocking()
            .map(vec![x, x + 1, x + 2], |y| y * 2)
            .into_iter()
            .map(Result::unwrap)
            .sum::<u32>()
    });
    assert_eq!(*out[0].as_ref().unwrap(), 66);
    assert_eq!(*out[1].as_ref().unwrap(), 126);
}

#[test]
fn cpu_map_inside_a_blocking_job() {
    let p = Processor::builder().blocking_threads(2).build().unwrap();
    let cpu = p.clone();
    let out = p
        .blocking()
        .map(vec![5u64, 6], move |n| slow_sum(&cpu, n * 10));
    assert_eq!(*out[0].as_ref().unwrap(), 1225);
    assert_eq!(*out[1].as_ref().unwrap(), 1770);
}

/// [`slow_sum`] with items that spin for their cost instead of sleeping.
fn spun_sum(p: &Processor, n: u64) -> u64 {
    let items: Vec<u64> = (0..n).collect();
    p.map_reduce(
        &items,
        |&x| {
            common::spin(Duration::from_micros(200));
            x
        },
        || 0,
        |a, b| a + b,
    )
    .value
}

/// A `Cpu` item that runs a `Blocking` batch whose jobs run `Cpu` batches,
/// on a rayon pool of one thread: the only rayon thread waited for the
/// blocking jobs, which waited for a rayon thread. A rayon thread that waits
/// for a `Blocking` batch now runs the pool's pending jobs meanwhile.
#[test]
fn regression_a_blocking_batch_inside_a_cpu_item_may_run_cpu_batches() {
    let p = Processor::builder()
        .cpu_threads(1)
        .blocking_threads(1)
        .build()
        .unwrap();
    let (done_tx, done) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let outer: Vec<u64> = (0..16).collect();
        let out = p.map(&outer, |&o| {
            common::spin(Duration::from_micros(200));
            if o % 4 != 3 {
                return o;
            }
            let cpu = p.clone();
            p.blocking()
                .map(vec![o], move |n| spun_sum(&cpu, 40) + n)
                .into_iter()
                .map(Result::unwrap)
                .sum::<u64>()
        });
        assert!(p.stats().parallel_runs >= 1, "the outer batch ran on rayon");
        done_tx.send(()).unwrap();
        out
    });
    done.recv_timeout(Duration::from_secs(10))
        .expect("deadlocked: the rayon thread waited for blocking jobs that waited for it");
    let out = worker.join().unwrap();
    for (o, r) in out.iter().enumerate() {
        let o = o as u64;
        let want = if o % 4 == 3 { o + 780 } else { o };
        assert_eq!(*r.as_ref().unwrap(), want);
    }
}
