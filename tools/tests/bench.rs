//! `pdiff bench`'s measurement protocol: one warm-up run, then the median of at least 3 timed runs.
use pdiff_tools::bench::{measure, median, MIN_RUNS};

#[test]
fn warm_up_then_median_of_timed_runs() {
    let mut calls = Vec::new();
    let m = measure(3, |i| {
        calls.push(i);
        // The warm-up (0) is slow, like a first call; the timed runs sleep 10 ms.
        std::thread::sleep(std::time::Duration::from_millis(if i == 0 { 800 } else { 10 }));
        Ok(i * 10)
    })
    .unwrap();
    assert_eq!(calls, [0, 1, 2, 3], "one warm-up run, then three timed runs");
    assert_eq!(m.output, 30, "the output of the last timed run");
    assert_eq!(m.seconds.len(), 3);
    // Generous bounds (a busy machine): the point is that the 0.8 s warm-up is in none of them.
    assert!(m.seconds.iter().all(|&s| (0.01..0.5).contains(&s)), "the warm-up is not timed: {:?}", m.seconds);
    assert_eq!(m.median_seconds, median(&m.seconds));
    assert!(m.peak_rss_mib.unwrap_or(1.0) > 0.0);
}

#[test]
fn fewer_than_three_runs_are_refused() {
    let mut calls = 0;
    let r = measure(MIN_RUNS - 1, |_| {
        calls += 1;
        Ok(())
    });
    match r {
        Err(pdiff::Error::InvalidArgument { field, message }) => {
            assert_eq!(field, "runs");
            assert!(message.contains("at least 3"), "{message}");
        }
        other => panic!("expected an invalid runs error, got {:?}", other.map(|_| ())),
    }
    assert_eq!(calls, 0, "nothing runs");
    // An error of the work stops the measurement.
    let r = measure(3, |i| if i == 2 { Err(pdiff::Error::Cancelled) } else { Ok(()) });
    assert!(matches!(r, Err(pdiff::Error::Cancelled)));
}

#[test]
fn medians() {
    assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    assert_eq!(median(&[5.0]), 5.0);
}
