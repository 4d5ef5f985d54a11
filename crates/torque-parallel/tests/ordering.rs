//! Results come back in input order, and one item's error stays that item's.

use torque_parallel::{ItemError, Processor};

fn processor() -> Processor {
    Processor::builder().blocking_threads(3).build().unwrap()
}

#[test]
fn cpu_map_keeps_input_order_for_every_size() {
    let p = processor();
    for n in [0usize, 1, 2, 7, 100, 1_000, 100_000] {
        let items: Vec<usize> = (0..n).collect();
        // Run each size twice: the first call is cold (timed prefix), the
        // second uses the learned cost.
        for _ in 0..2 {
            let out = p.map(&items, |&x| x * 3);
            assert_eq!(out.len(), n);
            for (i, r) in out.iter().enumerate() {
                assert_eq!(*r.as_ref().unwrap(), i * 3);
            }
        }
    }
}

#[test]
fn cpu_map_keeps_order_when_parallel() {
    let p = processor();
    let items: Vec<u64> = (0..64).collect();
    // Items slow enough that the batch escapes to rayon.
    let out = p.map(&items, |&x| {
        std::thread::sleep(std::time::Duration::from_millis(1));
        x + 1
    });
    let values: Vec<u64> = out.into_iter().map(Result::unwrap).collect();
    assert_eq!(values, (1..=64).collect::<Vec<_>>());
}

#[test]
fn try_map_isolates_each_items_error() {
    let p = processor();
    let items: Vec<i64> = (0..10_000).collect();
    let out = p.try_map(&items, |&x| if x % 7 == 0 { Err(x) } else { Ok(x * 2) });
    for (i, r) in out.iter().enumerate() {
        let i = i as i64;
        match r {
            Ok(v) => assert_eq!(*v, i * 2),
            Err(ItemError::Failed(e)) => {
                assert_eq!(*e, i);
                assert_eq!(i % 7, 0);
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(out.iter().filter(|r| r.is_err()).count(), 10_000 / 7 + 1);
}

#[test]
fn map_reduce_equals_sequential_fold() {
    let p = processor();
    for n in [0u64, 1, 10, 1_000, 1_000_000] {
        let items: Vec<u64> = (0..n).collect();
        let s = p.map_reduce(&items, |&x| x ^ 0x55, || 0u64, u64::wrapping_add);
        let expected = items
            .iter()
            .map(|&x| x ^ 0x55)
            .fold(0u64, u64::wrapping_add);
        assert_eq!(s.value, expected, "n = {n}");
        assert!(s.is_complete());
    }
}

#[test]
fn blocking_map_keeps_input_order_and_isolates_errors() {
    let p = processor();
    let items: Vec<u32> = (0..200).collect();
    let out = p
        .blocking()
        .try_map(items, |x| if x == 13 { Err("unlucky") } else { Ok(x * 2) });
    for (i, r) in out.iter().enumerate() {
        if i == 13 {
            assert!(matches!(r, Err(ItemError::Failed("unlucky"))));
        } else {
            assert_eq!(*r.as_ref().unwrap(), i as u32 * 2);
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn blocking_map_async_keeps_input_order() {
    let p = Processor::builder()
        .blocking_threads(2)
        .queue_capacity(1)
        .build()
        .unwrap();
    let out = p
        .blocking()
        .map_async((0..100u64).collect(), |x| x * x)
        .await;
    let values: Vec<u64> = out.into_iter().map(Result::unwrap).collect();
    assert_eq!(values, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
}
