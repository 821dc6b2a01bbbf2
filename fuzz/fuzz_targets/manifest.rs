//! The bundle manifest parser/validator on arbitrary bytes; when it accepts a manifest, the
//! layout it describes must be safe to use (offsets in bounds).
#![no_main]
use libfuzzer_sys::fuzz_target;
use pdiff_fuzz::limit_address_space;

fuzz_target!(init: limit_address_space(), |data: &[u8]| {
    if let Ok(m) = pdiff_core::bundle::parse_manifest(std::path::Path::new("fuzz"), data) {
        let layout = m.layout();
        assert_eq!(layout.param_count(), m.param_count);
        let flat = vec![0f32; m.param_count.min(1 << 20)];
        if flat.len() == m.param_count {
            for (t, v) in layout.split(&flat) {
                assert_eq!(v.len(), t.numel());
            }
        }
    }
});
