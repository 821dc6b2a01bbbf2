//! Condition files (JSON, CSV) and what is wrong with them. Conditional generators are
//! pdiff-train's (crates/train/tests/conditional.rs).
use pdiff_core::params::{ConditionSpec, Conditions, Layout, ParamSet};
use pdiff_core::Error;
use std::path::Path;

fn sources(k: usize) -> Vec<String> {
    (0..k).map(|i| format!("/data/ckpt/c{i:02}.safetensors")).collect()
}

fn invalid(r: pdiff_core::Result<Conditions>) -> String {
    match r {
        Err(e @ Error::InvalidArgument { .. }) => e.to_string(),
        other => panic!("expected an invalid-argument error, got {other:?}"),
    }
}

#[test]
fn condition_files_json_and_csv() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    // JSON with names, entries by file name, in any order: ordered like the checkpoints.
    let p = write("c.json", r#"{"names": ["a", "b"], "conditions": {"c01.safetensors": [0, 1], "c00.safetensors": [1, 0.5]}}"#);
    let c = Conditions::from_file(&p, &sources(2)).unwrap();
    assert_eq!(c.spec, ConditionSpec { dim: 2, names: Some(vec!["a".into(), "b".into()]) });
    assert_eq!(c.values, vec![1.0, 0.5, 0.0, 1.0]);
    // The plain object, keyed by the path as listed.
    let p = write("d.json", r#"{"/data/ckpt/c00.safetensors": [3], "/data/ckpt/c01.safetensors": [4]}"#);
    let c = Conditions::from_file(&p, &sources(2)).unwrap();
    assert_eq!((c.spec.dim, c.spec.names.clone(), c.values.clone()), (1, None, vec![3.0, 4.0]));
    // CSV with and without a header.
    let p = write("e.csv", "file,x,y,z\nc00.safetensors,1,2,3\nc01.safetensors, 4, 5, 6\n");
    let c = Conditions::from_file(&p, &sources(2)).unwrap();
    assert_eq!(c.spec.names, Some(vec!["x".into(), "y".into(), "z".into()]));
    assert_eq!(c.row(1), &[4.0, 5.0, 6.0]);
    let p = write("f.csv", "c01.safetensors,1\nc00.safetensors,0\n");
    assert_eq!(Conditions::from_file(&p, &sources(2)).unwrap().values, vec![0.0, 1.0]);

    // Errors name the file and what is wrong.
    let cases = [
        ("g.json", r#"{"c00.safetensors": [1, 2]}"#, "no condition vector for checkpoint 'c01.safetensors'"),
        ("h.json", r#"{"c00.safetensors": [1], "c01.safetensors": [2], "c09.safetensors": [3]}"#, "'c09.safetensors' is not one of the 2 checkpoints"),
        ("i.json", r#"{"c00.safetensors": [1, 2], "c01.safetensors": [2]}"#, "has 1 values"),
        ("j.json", r#"{"c00.safetensors": [1, "x"], "c01.safetensors": [2, 3]}"#, "is not a number"),
        ("k.json", "[1, 2]", "expected a JSON object"),
        ("l.json", "{", "not valid JSON"),
        ("m.csv", "c00.safetensors,1\nc01.safetensors,oops\n", "line 2: a value is not a number"),
        ("n.csv", "file,a,b\nc00.safetensors,1\nc01.safetensors,2\n", "2 names for a condition of dimension 1"),
        ("o.txt", "c00.safetensors,1", "must be .json or .csv"),
        ("p.json", r#"{"names": ["a", "a"], "conditions": {"c00.safetensors": [1, 2], "c01.safetensors": [3, 4]}}"#, "empty or repeated"),
    ];
    for (name, text, words) in cases {
        let p = write(name, text);
        let msg = invalid(Conditions::from_file(&p, &sources(2)));
        assert!(msg.contains(name) && msg.contains(words), "{name}: {msg}");
    }
    let msg = Conditions::from_file(&dir.path().join("missing.json"), &sources(2)).unwrap_err().to_string();
    assert!(msg.contains("missing.json"), "{msg}");
    // Non-finite values, and a count that does not match K.
    assert!(invalid(Conditions::new(ConditionSpec { dim: 2, names: None }, vec![1.0, f32::NAN])).contains("not finite"));
    let layout = Layout::from_shapes(&[("w", vec![2])]).unwrap();
    let set = ParamSet::from_rows(layout, vec![1.0, 2.0, 1.1, 2.1, 1.2, 2.2], (0..3).map(|i| format!("m{i}")).collect()).unwrap();
    let two = Conditions::new(ConditionSpec { dim: 1, names: None }, vec![0.0, 1.0]).unwrap();
    assert!(set.with_conditions(two).unwrap_err().to_string().contains("2 condition vectors for K = 3"));
    let _ = Path::new("");
}
