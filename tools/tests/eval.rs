//! Evaluation arithmetic that needs no task: verdicts on integer counts of test images, exact
//! medians of counts, the novelty measure (distances to the nearest original).
use pdiff_core::params::{Layout, ParamSet};
use pdiff_tools::eval::{median_count, novelty, verdict, Spread};

#[test]
fn verdicts_compare_counts_of_test_images() {
    // One image apart is one image, whatever the float rounding of
    // 1765/2004 - 1764/2004 or 1966/2004 - 1965/2004 would say.
    assert_eq!(verdict(1765.0, 1764.0), "better");
    assert_eq!(verdict(1966.0, 1965.0), "better");
    assert_eq!(verdict(1764.0, 1765.0), "worse");
    assert_eq!(verdict(1764.0, 1764.0), "equal");
    // A median of an even number of models halfway between two counts: less than one image.
    assert_eq!(verdict(1764.5, 1764.0), "equal");
    assert_eq!(verdict(1763.5, 1764.0), "equal");
    assert_eq!(verdict(1765.5, 1764.5), "better");
    assert_eq!(verdict(1762.5, 1764.0), "worse");
}

#[test]
fn median_of_counts_is_exact() {
    assert_eq!(median_count(&[3, 1, 2]), 2.0);
    assert_eq!(median_count(&[1764, 1765]), 1764.5);
    assert_eq!(median_count(&[1765, 1764, 1766, 1764]), 1764.5);
    assert_eq!(median_count(&[7]), 7.0);
    assert!(median_count(&[]).is_nan());
}

/// K originals on a line in one tensor of 4 values: original i = base + i * step (host units).
fn line_set(k: usize) -> ParamSet {
    let layout = Layout::from_shapes(&[("w", vec![4])]).unwrap();
    let data: Vec<f32> = (0..k).flat_map(|i| (0..4).map(move |j| 10.0 + j as f32 + 0.5 * i as f32)).collect();
    ParamSet::from_rows(layout, data, (0..k).map(|i| format!("memory[{i}]")).collect()).unwrap()
}

#[test]
fn novelty_in_normalized_units() {
    let set = line_set(5);
    let std = set.layout.tensors[0].std as f64;
    // Neighbouring originals differ by 0.5 in each of 4 values: distance 0.5 * 2 / std.
    let unit = 1.0 / std;
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1e-9);

    // Copies of originals: distance 0, "copies".
    let copies: Vec<f32> = set.data[..8].to_vec();
    let n = novelty(&set, &copies);
    assert_eq!(n.generated_to_nearest_original, Spread { median: 0.0, min: 0.0, max: 0.0 });
    assert!(close(n.original_to_nearest_other_original.median, unit), "{:?} vs {unit}", n.original_to_nearest_other_original);
    assert_eq!((n.ratio_of_medians, n.reading.as_str()), (Some(0.0), "copies"));
    assert!(n.sentence().contains("likely copies"), "{}", n.sentence());

    // Halfway between two neighbours: half the originals' spacing, ratio 0.5 ("like").
    let halfway: Vec<f32> = (0..4).map(|j| 10.0 + j as f32 + 0.25).collect();
    let n = novelty(&set, &halfway);
    assert!(close(n.generated_to_nearest_original.median, 0.5 * unit));
    assert!(close(n.ratio_of_medians.unwrap(), 0.5));
    assert_eq!(n.reading, "like the originals");
    assert!(n.sentence().contains("not copies"), "{}", n.sentence());

    // Every pair of originals: 1 to 4 spacings apart (4, 3, 3, 2, 2, 2, 1, 1, 1, 1 -> median 2).
    assert_eq!(n.original_to_original.min, n.original_to_nearest_other_original.min);
    assert!(close(n.original_to_original.max, 4.0 * unit) && close(n.original_to_original.median, 2.0 * unit));

    // Beyond the last original by 3 and 1.5 spacings: "farther", and farther than two originals
    // typically are (median 2.25 > 2 spacings); min / max over the generated rows.
    let beyond: Vec<f32> = [3.0f32, 1.5].iter().flat_map(|extra| (0..4).map(move |j| 10.0 + j as f32 + 2.0 + 0.5 * extra)).collect();
    let n = novelty(&set, &beyond);
    assert!(close(n.generated_to_nearest_original.max, 3.0 * unit) && close(n.generated_to_nearest_original.min, 1.5 * unit));
    assert!(close(n.ratio_of_medians.unwrap(), 2.25));
    assert_eq!(n.reading, "farther");
    assert!(n.sentence().contains("outside the region of the originals"), "{}", n.sentence());

    // Off the line, 2.5 spacings from the middle original (and farther from the others): more
    // than twice the nearest-neighbour spacing, but well within the originals' extent (two of
    // 41 originals on a line are about 12 spacings apart): new points among them.
    let k = 41;
    let many = line_set(k);
    let unit = 1.0 / many.layout.tensors[0].std as f64;
    let middle: Vec<f32> = many.row(k / 2).to_vec();
    let off: Vec<f32> = middle.iter().enumerate().map(|(j, v)| v + if j % 2 == 0 { 1.25 } else { -1.25 }).collect();
    let n = novelty(&many, &off);
    assert!(close(n.generated_to_nearest_original.median, 2.5 * unit), "{:?}", n.generated_to_nearest_original);
    assert!(close(n.ratio_of_medians.unwrap(), 2.5));
    assert_eq!(n.reading, "farther");
    assert!(n.sentence().contains("within the region of the originals"), "{}", n.sentence());

    // Duplicated originals leave no scale: undefined, said so.
    let layout = Layout::from_shapes(&[("w", vec![2])]).unwrap();
    let dup = ParamSet::from_rows(layout, vec![1.0, 2.0, 1.0, 2.0], vec!["a".into(), "b".into()]).unwrap();
    let n = novelty(&dup, &[1.5, 2.5]);
    assert_eq!((n.ratio_of_medians, n.reading.as_str()), (None, "undefined"));
    assert!(n.sentence().starts_with("undefined"));
}
