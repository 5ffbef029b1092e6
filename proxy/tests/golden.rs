//! Golden tests: realistic Service + EndpointSlice fixtures → the model's text form.
//!
//! Each `tests/fixtures/NAME.json` holds `node`, optional `options`, `services` and
//! `endpointSlices`; its expected rendering is `tests/golden/NAME.txt`. After an intended
//! change, regenerate with `WEFT_UPDATE_GOLDEN=1 cargo test -p weft-proxy --test golden` and
//! review the diff.

mod render_fixtures;

use std::fs;
use std::path::{Path, PathBuf};

use weft_proxy::{ChangeTracker, Model};

fn render(path: &Path) -> String {
    let f = render_fixtures::load(path);
    let full = f.model();
    // The same objects fed one change at a time must give the same model.
    let mut inc = Model::new(f.node.clone(), f.options.clone());
    let mut step = ChangeTracker::new();
    for s in f.services() {
        step.upsert_service(s).unwrap();
        let c = step.take_changes();
        inc.recompute(&step, &c);
    }
    for s in f.slices() {
        step.upsert_slice(s).unwrap();
        let c = step.take_changes();
        inc.recompute(&step, &c);
    }
    assert_eq!(inc, full, "{}: incremental and full models differ", path.display());
    full.to_string()
}

#[test]
fn fixtures_match_golden_files() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests");
    let fixtures = render_fixtures::fixtures();
    let update = std::env::var_os("WEFT_UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for f in &fixtures {
        let got = render(f);
        let golden = dir.join("golden").join(f.file_stem().unwrap()).with_extension("txt");
        if update {
            fs::write(&golden, &got).expect("write golden");
            continue;
        }
        match fs::read_to_string(&golden) {
            Ok(want) if want == got => {}
            Ok(want) => failures.push(format!("{}:\n--- want\n{want}\n--- got\n{got}", golden.display())),
            Err(e) => failures.push(format!(
                "{}: {e} (generate with WEFT_UPDATE_GOLDEN=1)",
                golden.display()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
