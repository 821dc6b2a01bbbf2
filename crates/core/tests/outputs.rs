//! Outputs never destroy what the library did not write (`pdiff_core::output`): creating, replacing
//! a previous output atomically, filling an empty directory, refusing files, links, foreign
//! directories and other kinds of output, and writing beside foreign files with force without
//! touching them. Every case compares what existed before, byte for byte, with what is left.
use pdiff_core::files;
use pdiff_core::output::{self, IfForeign, OutputDir, OutputKind, OUTPUT_MARKER};
use pdiff_core::Error;
use pdiff_test_support::{assert_no_leftovers, snapshot};
use std::path::Path;

/// Write an output of `kind` at `dest` holding `files` (name -> content).
fn write(dest: &Path, kind: OutputKind, if_foreign: IfForeign, files: &[(&str, &str)]) -> pdiff_core::Result<()> {
    output::write_output_dir(dest, kind, if_foreign, |staging| {
        for (name, content) in files {
            files::write_atomic(&staging.join(name), content.as_bytes())?;
        }
        Ok(())
    })
}

fn marker_files(dir: &Path) -> Vec<String> {
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(OUTPUT_MARKER)).unwrap()).unwrap();
    m["files"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

fn refusal(e: Error, words: &[&str]) {
    let msg = e.to_string();
    assert!(matches!(e, Error::OutputExists { .. }), "expected OutputExists, got {msg}");
    for w in words {
        assert!(msg.contains(w), "{msg:?} should mention {w:?}");
    }
}

#[test]
fn missing_destination_is_created_with_a_marker() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("a/b/out"); // missing parents are created
    write(&out, OutputKind::Samples, IfForeign::Refuse, &[("gen_0000.safetensors", "x"), ("gen_0001.safetensors", "y")]).unwrap();
    assert_eq!(std::fs::read(out.join("gen_0001.safetensors")).unwrap(), b"y");
    assert_eq!(marker_files(&out), ["gen_0000.safetensors", "gen_0001.safetensors"]);
    assert_no_leftovers(out.parent().unwrap());
    assert_no_leftovers(&out);
}

#[test]
fn previous_output_is_replaced_whole() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    write(
        &out,
        OutputKind::Samples,
        IfForeign::Refuse,
        &[("gen_0000.safetensors", "old0"), ("gen_0001.safetensors", "old1"), ("gen_0002.safetensors", "old2")],
    )
    .unwrap();
    let inode_before = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&out).unwrap());
    write(&out, OutputKind::Samples, IfForeign::Refuse, &[("gen_0000.safetensors", "new0"), ("gen_0001.safetensors", "new1")]).unwrap();
    let after = snapshot(&out);
    assert_eq!(after.len(), 3, "{after:?}"); // two files and the marker: gen_0002 went with the old output
    assert_eq!(after[Path::new("gen_0000.safetensors")], b"new0");
    assert_eq!(marker_files(&out), ["gen_0000.safetensors", "gen_0001.safetensors"]);
    // A new directory took its place (the old one was swapped out, then deleted).
    assert_ne!(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&out).unwrap()), inode_before);
    assert_no_leftovers(t.path());
}

#[test]
fn a_failing_fill_keeps_the_previous_output_intact() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    write(&out, OutputKind::Bundle, IfForeign::Refuse, &[("pdiff.json", "{}"), ("decoder.onnx", "graph")]).unwrap();
    let before = snapshot(&out);
    let e = output::write_output_dir(&out, OutputKind::Bundle, IfForeign::Refuse, |staging| {
        files::write_atomic(&staging.join("pdiff.json"), b"half a bundle")?;
        Err::<(), _>(Error::Cancelled)
    })
    .unwrap_err();
    assert!(matches!(e, Error::Cancelled));
    assert_eq!(snapshot(&out), before);
    assert_no_leftovers(t.path());
    // An OutputDir dropped without commit (a panic, an early return) cleans up the same way.
    let staged = OutputDir::begin(&out, OutputKind::Bundle, IfForeign::Refuse).unwrap();
    files::write_atomic(&staged.path().join("pdiff.json"), b"never committed").unwrap();
    drop(staged);
    assert_eq!(snapshot(&out), before);
    assert_no_leftovers(t.path());
}

#[test]
fn the_destination_always_holds_a_complete_output_while_it_is_replaced() {
    // A reader polls the output while it is replaced 200 times: every file of it is always
    // there (the old or the new one), never a moment with neither.
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let files = [("gen_0000.safetensors", "a"), ("gen_0001.safetensors", "b")];
    write(&out, OutputKind::Samples, IfForeign::Refuse, &files).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (out, stop) = (out.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut looks = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for name in ["gen_0000.safetensors", "gen_0001.safetensors", OUTPUT_MARKER] {
                    assert!(std::fs::symlink_metadata(out.join(name)).is_ok(), "{name} missing after {looks} looks");
                    looks += 1;
                }
            }
            looks
        })
    };
    for _ in 0..200 {
        write(&out, OutputKind::Samples, IfForeign::Refuse, &files).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    assert_no_leftovers(t.path());
}

#[test]
fn a_regular_file_is_refused_even_with_force() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("notes.txt");
    std::fs::write(&out, "my notes").unwrap();
    for policy in [IfForeign::Refuse, IfForeign::Force] {
        let e = write(&out, OutputKind::Samples, policy, &[("gen_0000.safetensors", "x")]).unwrap_err();
        refusal(e, &["notes.txt", "is a regular file, not a directory"]);
        assert_eq!(std::fs::read(&out).unwrap(), b"my notes");
    }
    assert_eq!(snapshot(t.path()).len(), 1);
}

#[test]
fn a_symbolic_link_is_refused_even_with_force() {
    let t = tempfile::tempdir().unwrap();
    let target = t.path().join("elsewhere");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep.txt"), "kept").unwrap();
    let out = t.path().join("out");
    std::os::unix::fs::symlink(&target, &out).unwrap();
    let before = snapshot(t.path());
    for policy in [IfForeign::Refuse, IfForeign::Force] {
        let e = write(&out, OutputKind::Samples, policy, &[("gen_0000.safetensors", "x")]).unwrap_err();
        refusal(e, &["is a symbolic link (to ", "elsewhere"]);
        assert_eq!(snapshot(t.path()), before);
    }
}

#[test]
fn a_foreign_directory_is_refused_and_named() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("home");
    std::fs::create_dir_all(out.join("photos")).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    std::fs::write(out.join("photos/cat.jpg"), "meow").unwrap();
    let before = snapshot(&out);
    let e = write(&out, OutputKind::Samples, IfForeign::Refuse, &[("gen_0000.safetensors", "x")]).unwrap_err();
    refusal(e, &["home", "already exists and holds files libpdiff did not write (notes.txt, photos)", "force"]);
    assert_eq!(snapshot(&out), before);
    assert_no_leftovers(t.path());
    // The refusal comes before any work: begin() already refuses.
    assert!(OutputDir::begin(&out, OutputKind::Samples, IfForeign::Refuse).is_err());
    assert!(output::check_output_dir(&out, OutputKind::Samples, IfForeign::Refuse).is_err());
}

#[test]
fn many_foreign_entries_are_counted() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    for i in 0..8 {
        std::fs::write(out.join(format!("f{i}")), "x").unwrap();
    }
    let e = write(&out, OutputKind::Samples, IfForeign::Refuse, &[("a", "x")]).unwrap_err();
    refusal(e, &["(f0, f1, f2, f3, f4, and 3 more)"]);
}

#[test]
fn force_writes_beside_foreign_files_and_never_touches_them() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("home");
    std::fs::create_dir_all(out.join("photos")).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    std::fs::write(out.join("photos/cat.jpg"), "meow").unwrap();
    let foreign = snapshot(&out);
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&out).unwrap());
    let three = [("gen_0000.safetensors", "a0"), ("gen_0001.safetensors", "a1"), ("gen_0002.safetensors", "a2")];
    write(&out, OutputKind::Samples, IfForeign::Force, &three).unwrap();
    let after = snapshot(&out);
    for (path, bytes) in &foreign {
        assert_eq!(&after[path], bytes, "{} changed", path.display());
    }
    assert_eq!(std::fs::read(out.join("gen_0002.safetensors")).unwrap(), b"a2");
    assert_eq!(marker_files(&out), ["gen_0000.safetensors", "gen_0001.safetensors", "gen_0002.safetensors"]);
    // Forced again with fewer files: ours are replaced, the extra one of ours removed, theirs kept.
    write(&out, OutputKind::Samples, IfForeign::Force, &[("gen_0000.safetensors", "b0")]).unwrap();
    let after = snapshot(&out);
    for (path, bytes) in &foreign {
        assert_eq!(&after[path], bytes, "{} changed", path.display());
    }
    assert_eq!(after[Path::new("gen_0000.safetensors")], b"b0");
    assert!(!out.join("gen_0001.safetensors").exists() && !out.join("gen_0002.safetensors").exists());
    assert_eq!(marker_files(&out), ["gen_0000.safetensors"]);
    // The same directory all along, with nothing of ours left around.
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&out).unwrap()), inode);
    assert_no_leftovers(&out);
    // Without force, the foreign files still make it a refusal.
    let e = write(&out, OutputKind::Samples, IfForeign::Refuse, &[("gen_0000.safetensors", "c0")]).unwrap_err();
    refusal(e, &["notes.txt, photos"]);
}

#[test]
fn a_name_taken_by_a_foreign_file_is_refused_even_with_force() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("gen_0001.safetensors"), "someone else's model").unwrap();
    let before = snapshot(&out);
    let e = write(&out, OutputKind::Samples, IfForeign::Force, &[("gen_0000.safetensors", "a"), ("gen_0001.safetensors", "b")]).unwrap_err();
    refusal(e, &["under names this output needs (gen_0001.safetensors)"]);
    assert_eq!(snapshot(&out), before);
    // A file of ours that the user replaced by a directory is theirs now: kept, refused.
    let t2 = tempfile::tempdir().unwrap();
    let out = t2.path().join("out");
    write(&out, OutputKind::Samples, IfForeign::Refuse, &[("gen_0000.safetensors", "a")]).unwrap();
    std::fs::remove_file(out.join("gen_0000.safetensors")).unwrap();
    std::fs::create_dir(out.join("gen_0000.safetensors")).unwrap();
    std::fs::write(out.join("gen_0000.safetensors/theirs"), "t").unwrap();
    let before = snapshot(&out);
    let e = write(&out, OutputKind::Samples, IfForeign::Refuse, &[("gen_0000.safetensors", "b")]).unwrap_err();
    refusal(e, &["did not write (gen_0000.safetensors)"]);
    let e = write(&out, OutputKind::Samples, IfForeign::Force, &[("gen_0000.safetensors", "b")]).unwrap_err();
    refusal(e, &["under names this output needs"]);
    assert_eq!(snapshot(&out), before);
}

#[test]
fn a_marker_that_is_not_ours_is_a_foreign_file() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join(OUTPUT_MARKER), "{ not a marker").unwrap();
    let before = snapshot(&out);
    let e = write(&out, OutputKind::Samples, IfForeign::Refuse, &[("a", "x")]).unwrap_err();
    refusal(e, &[OUTPUT_MARKER]);
    let e = write(&out, OutputKind::Samples, IfForeign::Force, &[("a", "x")]).unwrap_err();
    refusal(e, &["under names this output needs", OUTPUT_MARKER]);
    assert_eq!(snapshot(&out), before);
}

#[test]
fn an_empty_directory_is_filled_in_place() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&out).unwrap());
    write(&out, OutputKind::Checkpoints, IfForeign::Refuse, &[("ckpt_0000.safetensors", "c")]).unwrap();
    assert_eq!(std::fs::read(out.join("ckpt_0000.safetensors")).unwrap(), b"c");
    assert_eq!(marker_files(&out), ["ckpt_0000.safetensors"]);
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&out).unwrap()), inode, "the user's directory is kept");
    assert_no_leftovers(&out);
    assert_no_leftovers(t.path());
}

#[test]
fn an_output_of_another_kind_is_refused_even_with_force() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("bundle");
    write(&out, OutputKind::Bundle, IfForeign::Refuse, &[("pdiff.json", "{}")]).unwrap();
    let before = snapshot(&out);
    for policy in [IfForeign::Refuse, IfForeign::Force] {
        let e = write(&out, OutputKind::Samples, policy, &[("gen_0000.safetensors", "x")]).unwrap_err();
        refusal(e, &["holds a libpdiff bundle output, not samples"]);
        assert_eq!(snapshot(&out), before);
    }
}

#[test]
fn nested_outputs_are_ours_only_when_complete() {
    // A demo-like output: a file and a sub-output (a bundle) of its own.
    let write_demo = |out: &Path, policy: IfForeign, tag: &str| {
        output::write_output_dir(out, OutputKind::Demo, policy, |staging| {
            write(&staging.join("generator"), OutputKind::Bundle, IfForeign::Refuse, &[("pdiff.json", tag)])?;
            files::write_atomic(&staging.join("results.json"), tag.as_bytes())
        })
    };
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("demo-out");
    write_demo(&out, IfForeign::Refuse, "one").unwrap();
    write_demo(&out, IfForeign::Refuse, "two").unwrap();
    assert_eq!(std::fs::read(out.join("generator/pdiff.json")).unwrap(), b"two");
    assert_eq!(marker_files(&out), ["generator", "results.json"]);
    assert_no_leftovers(t.path());
    // The single command replaces the demo's bundle: it is a bundle output of its own.
    write(&out.join("generator"), OutputKind::Bundle, IfForeign::Refuse, &[("pdiff.json", "three")]).unwrap();
    write_demo(&out, IfForeign::Refuse, "four").unwrap();
    // Beside a file of the user's (forced), twice: the sub-output is replaced as a whole.
    let beside = t.path().join("home");
    std::fs::create_dir(&beside).unwrap();
    std::fs::write(beside.join("notes.txt"), "mine").unwrap();
    write_demo(&beside, IfForeign::Force, "a").unwrap();
    write_demo(&beside, IfForeign::Force, "b").unwrap();
    assert_eq!(std::fs::read(beside.join("generator/pdiff.json")).unwrap(), b"b");
    assert_eq!(std::fs::read(beside.join("notes.txt")).unwrap(), b"mine");
    assert_eq!(marker_files(&beside), ["generator", "results.json"]);
    assert_no_leftovers(&beside);
    // A file of the user's inside the sub-output: the whole demo is no longer ours to replace,
    // and with force its generator (a name the new demo needs) is still not replaced.
    std::fs::write(out.join("generator/my-notes.md"), "notes").unwrap();
    let before = snapshot(&out);
    let e = write_demo(&out, IfForeign::Refuse, "five").unwrap_err();
    refusal(e, &["did not write (generator)"]);
    let e = write_demo(&out, IfForeign::Force, "five").unwrap_err();
    refusal(e, &["under names this output needs (generator)"]);
    assert_eq!(snapshot(&out), before);
    assert_no_leftovers(t.path());
    assert_no_leftovers(&out);
}

#[test]
fn single_file_outputs_replace_only_what_they_recognize() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("bench.json");
    let is_report = |b: &[u8]| b.starts_with(b"REPORT");
    // Missing: written. A previous report: replaced.
    output::write_output_file(&path, b"REPORT 1", IfForeign::Refuse, "bench report", is_report).unwrap();
    output::write_output_file(&path, b"REPORT 2", IfForeign::Refuse, "bench report", is_report).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"REPORT 2");
    // Someone else's file: refused, unless forced.
    std::fs::write(&path, "thesis draft").unwrap();
    let e = output::write_output_file(&path, b"REPORT 3", IfForeign::Refuse, "bench report", is_report).unwrap_err();
    refusal(e, &["bench.json", "already exists and is not a bench report", "force the write to replace it"]);
    assert_eq!(std::fs::read(&path).unwrap(), b"thesis draft");
    output::write_output_file(&path, b"REPORT 3", IfForeign::Force, "bench report", is_report).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"REPORT 3");
    // A directory or a link where the file goes: refused even with force.
    let dir = t.path().join("dir.json");
    std::fs::create_dir(&dir).unwrap();
    let e = output::write_output_file(&dir, b"REPORT", IfForeign::Force, "bench report", is_report).unwrap_err();
    refusal(e, &["is a directory, not a file"]);
    let link = t.path().join("link.json");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let e = output::write_output_file(&link, b"REPORT 4", IfForeign::Force, "bench report", is_report).unwrap_err();
    refusal(e, &["is a symbolic link"]);
    assert_eq!(std::fs::read(&path).unwrap(), b"REPORT 3");
    assert_no_leftovers(t.path());
}

/// A process id that existed and is gone (a finished child).
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// What a run killed outright (SIGKILL) leaves — a staging directory inside a directory it was
/// filling, a temporary file, a staging directory beside the output — is recognized as
/// libpdiff's own on the next run and cleaned, never reported as files libpdiff did not write;
/// the same leftovers of a run still going on are reported as that run's.
#[test]
fn what_a_killed_run_left_is_cleaned_by_the_next_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("gen");
    std::fs::create_dir(&dest).unwrap();
    let pid = dead_pid();
    let staging = dest.join(format!(".pdiff-staging-{pid}-0"));
    std::fs::create_dir(&staging).unwrap();
    std::fs::write(staging.join(".pdiff-staging.json"), format!(r#"{{"pdiff_staging": 1, "pid": {pid}}}"#)).unwrap();
    std::fs::write(staging.join("gen_0000.safetensors"), b"half written").unwrap();
    std::fs::write(dest.join(format!(".pdiff-output.json.tmp-{pid}-3")), b"{").unwrap();
    let beside = tmp.path().join(format!(".gen.tmp-{pid}-1"));
    std::fs::create_dir(&beside).unwrap();
    std::fs::write(beside.join(".pdiff-staging.json"), format!(r#"{{"pdiff_staging": 1, "pid": {pid}}}"#)).unwrap();
    output::check_output_dir(&dest, OutputKind::Samples, IfForeign::Refuse).unwrap();
    write(&dest, OutputKind::Samples, IfForeign::Refuse, &[("gen_0000.safetensors", "new")]).unwrap();
    assert_eq!(std::fs::read(dest.join("gen_0000.safetensors")).unwrap(), b"new");
    assert!(!staging.exists() && !beside.exists(), "leftovers removed");
    assert_no_leftovers(&dest);
    assert_no_leftovers(tmp.path());

    // A staging directory of a run still going on (this process): reported as such.
    let busy = dest.join(format!(".pdiff-staging-{}-99", std::process::id()));
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join(".pdiff-staging.json"), format!(r#"{{"pdiff_staging": 1, "pid": {}}}"#, std::process::id())).unwrap();
    let e = write(&dest, OutputKind::Samples, IfForeign::Force, &[("gen_0000.safetensors", "x")]).unwrap_err();
    refusal(e, &["being written by another libpdiff run", &format!("process {}", std::process::id())]);
    std::fs::remove_dir_all(&busy).unwrap();
    // A look-alike without the staging marker is the user's: refused as such, and kept.
    let alike = dest.join(".pdiff-staging-1-1");
    std::fs::create_dir(&alike).unwrap();
    let e = write(&dest, OutputKind::Samples, IfForeign::Refuse, &[("gen_0000.safetensors", "x")]).unwrap_err();
    refusal(e, &["did not write", ".pdiff-staging-1-1"]);
    assert!(alike.exists());
}
