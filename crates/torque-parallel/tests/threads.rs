//! Dropping a processor joins its blocking threads: none outlive it.
//! (Alone in its file: it counts the process's threads by name.)

use torque_parallel::Processor;

fn blocking_threads_alive() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.starts_with("torque-blocking"))
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn dropping_the_processor_joins_the_blocking_threads() {
    if !std::path::Path::new("/proc/self/task").exists() {
        eprintln!("no /proc: nothing to count");
        return;
    }
    let p = Processor::builder().blocking_threads(3).build().unwrap();
    assert_eq!(blocking_threads_alive(), 0, "threads start on first use");
    let out = p.blocking().map(vec![1, 2, 3], |x| x * 2);
    assert_eq!(out.len(), 3);
    // A thread names itself once it first runs, which under load can be
    // after the batch is done: wait for it (with a limit).
    let start = std::time::Instant::now();
    while blocking_threads_alive() < 3 {
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
        std::thread::yield_now();
    }
    let clone = p.clone();
    drop(p);
    assert_eq!(blocking_threads_alive(), 3, "a clone keeps them");
    drop(clone);
    assert_eq!(blocking_threads_alive(), 0);
}
