//! PEFT adapter directories through the `pdiff` CLI: a generator trained on LoRA adapters (PEFT's
//! tensor names) writes `gen_XXXX/` directories that hold the given `adapter_config.json` as it
//! is and `adapter_model.safetensors` with the layout's names and the provenance; a second run
//! replaces them; what PEFT could not load is refused before anything is written. The real
//! client (PeftModel.from_pretrained on such directories) is tests/python/test_peft.py.
use pdiff_core::params::Layout;
use pdiff_test_support::{assert_error, assert_nothing_written, write_checkpoints};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn pdiff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pdiff")).args(args).output().expect("run pdiff")
}

const CONFIG: &str = r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"], "modules_to_save": ["classifier"]}"#;

fn lora_layout() -> Layout {
    Layout::from_shapes(&[
        ("base_model.model.layers.0.attention.q_proj.lora_A.weight", vec![2, 8]),
        ("base_model.model.layers.0.attention.q_proj.lora_B.weight", vec![8, 2]),
        ("base_model.model.classifier.weight", vec![2, 8]),
        ("base_model.model.classifier.bias", vec![2]),
    ])
    .unwrap()
}

/// A bundle trained in a few steps on K = 4 adapters of `layout`, and a config file, in `d`.
fn bundle(d: &Path, layout: &Layout) -> (PathBuf, PathBuf) {
    let ckpts = d.join("adapters");
    write_checkpoints(&ckpts, layout, 4);
    let b = d.join("bundle");
    let o = pdiff(&[
        "train",
        "--checkpoints",
        ckpts.to_str().unwrap(),
        "--out",
        b.to_str().unwrap(),
        "--ae-steps",
        "3",
        "--diffusion-steps",
        "3",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let config = d.join("adapter_config.json");
    std::fs::write(&config, CONFIG).unwrap();
    (b, config)
}

fn sample(b: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["sample", "--bundle", b.to_str().unwrap(), "-n", "3", "--steps", "4", "--out", out.to_str().unwrap(), "--format", "peft"];
    args.extend_from_slice(extra);
    pdiff(&args)
}

#[test]
fn writes_peft_directories_with_the_config_and_named_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = lora_layout();
    let (b, config) = bundle(tmp.path(), &layout);
    let out = tmp.path().join("generated");
    let o = sample(&b, &out, &["--peft-config", config.to_str().unwrap(), "--seed", "3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let plain = tmp.path().join("plain");
    let o = pdiff(&["sample", "--bundle", b.to_str().unwrap(), "-n", "3", "--steps", "4", "--seed", "3", "--out", plain.to_str().unwrap()]);
    assert!(o.status.success());
    for i in 0..3 {
        let dir = out.join(format!("gen_{i:04}"));
        assert_eq!(std::fs::read_to_string(dir.join("adapter_config.json")).unwrap(), CONFIG, "the config is written as given");
        let weights = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&weights).unwrap();
        let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
        names.sort();
        let mut want: Vec<String> = layout.tensors.iter().map(|t| t.name.clone()).collect();
        want.sort();
        assert_eq!(names, want);
        // The same tensors, bit for bit, as the plain safetensors output of the same seed.
        let same = std::fs::read(plain.join(format!("gen_{i:04}.safetensors"))).unwrap();
        let same = safetensors::SafeTensors::deserialize(&same).unwrap();
        for n in &want {
            assert_eq!(st.tensor(n).unwrap().data(), same.tensor(n).unwrap().data(), "{n}");
        }
        let (_, meta) = safetensors::SafeTensors::read_metadata(&weights).unwrap();
        let meta = meta.metadata().clone().expect("provenance in __metadata__");
        assert_eq!(meta.get("pdiff.model_index").map(String::as_str), Some(i.to_string().as_str()), "{meta:?}");
    }
    // A second run replaces the directories (the output is the library's own).
    let o = sample(&b, &out, &["--peft-config", config.to_str().unwrap(), "--seed", "4"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("gen_0002/adapter_model.safetensors").is_file());
}

#[test]
fn refuses_what_peft_could_not_load_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let (b, config) = bundle(tmp.path(), &lora_layout());
    let out = tmp.path().join("generated");
    assert_error(&sample(&b, &out, &[]), &["--format peft needs --peft-config"]);
    let bad = tmp.path().join("bad.json");
    for (text, words) in [
        ("{\"r\": 2}", vec!["bad.json", "peft_type"]),
        ("[1, 2]", vec!["bad.json", "JSON object"]),
        ("{\"peft_type\": \"LORA\", \"peft_type\": \"IA3\"}", vec!["bad.json", "peft_type"]),
        ("not json", vec!["bad.json", "not JSON"]),
    ] {
        std::fs::write(&bad, text).unwrap();
        assert_error(&sample(&b, &out, &["--peft-config", bad.to_str().unwrap()]), &words);
        assert_nothing_written(&out);
    }
    assert_error(&sample(&b, &out, &["--peft-config", tmp.path().join("missing.json").to_str().unwrap()]), &["missing.json"]);
    // A generator whose tensors are not named as PEFT names them.
    let d = tmp.path().join("plain-names");
    std::fs::create_dir(&d).unwrap();
    let (plain, _) = bundle(&d, &Layout::from_shapes(&[("fc.weight", vec![2, 3]), ("fc.bias", vec![2])]).unwrap());
    assert_error(&sample(&plain, &out, &["--peft-config", config.to_str().unwrap()]), &["fc.bias", "base_model.model."]);
    assert_nothing_written(&out);
    // A config without --format peft.
    let o = pdiff(&["sample", "--bundle", b.to_str().unwrap(), "-n", "1", "--out", out.to_str().unwrap(), "--peft-config", config.to_str().unwrap()]);
    assert_error(&o, &["--format peft"]);
    assert_nothing_written(&out);
}
