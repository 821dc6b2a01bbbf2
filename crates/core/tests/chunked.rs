//! The chunked preset's token map (tensor rows as tokens, every parameter once) and the
//! automatic choice of preset by D. Training it is pdiff-train's (crates/train/tests/chunked.rs).
use pdiff_core::model::{auto_chunk_len, Preset, TokenMap, AUTO_CHUNKED_MIN_PARAMS};
use pdiff_core::params::Layout;

#[test]
fn tokens_follow_rows_and_cover_every_parameter_once() {
    // Rows of 10 (one token each), a row of 150 (cut into 64 + 64 + 22), a bias of 3.
    let layout = Layout::from_shapes(&[("a.w", vec![2, 10]), ("b.w", vec![1, 3, 50]), ("b.b", vec![3])]).unwrap();
    let m = TokenMap::new(&layout, 64);
    assert_eq!(m.offset, vec![0, 10, 20, 84, 148, 170]);
    assert_eq!(m.len, vec![10, 10, 64, 64, 22, 3]);
    assert_eq!(m.grid_len(), 6 * 64);
    let grid = m.grid_index();
    let mask = m.slot_mask();
    let flat = m.flat_index();
    assert_eq!(flat.len(), layout.param_count());
    // flat -> grid -> flat is the identity, and every slot that holds a parameter is unmasked.
    for (p, &slot) in flat.iter().enumerate() {
        assert_eq!(grid[slot as usize], p as i64);
        assert_eq!(mask[slot as usize], 1.0);
    }
    assert_eq!(mask.iter().filter(|&&v| v == 1.0).count(), layout.param_count());
}

#[test]
fn the_preset_follows_d_when_none_is_given() {
    assert_eq!(Preset::auto(13_002), Preset::Compact, "mnist-mlp3 keeps its preset");
    assert_eq!(Preset::auto(AUTO_CHUNKED_MIN_PARAMS - 1), Preset::Compact);
    assert_eq!(Preset::auto(AUTO_CHUNKED_MIN_PARAMS), Preset::Chunked);
    assert_eq!(Preset::auto(936_330), Preset::Chunked);
    assert_eq!("chunked".parse::<Preset>().unwrap(), Preset::Chunked);
    // Token length ~ sqrt(D), as a power of two in [64, 1024].
    assert_eq!(auto_chunk_len(100), 64);
    assert_eq!(auto_chunk_len(100_000), 512);
    assert_eq!(auto_chunk_len(936_330), 1024);
    assert_eq!(auto_chunk_len(100_000_000), 1024);
}
