//! Prints histor's CustomResourceDefinitions, or with `--out-dir DIR` writes one file per CRD there
//! (`crds/` is that output; a test fails when it drifts from the Rust types).
fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => {
            for (_, crd) in histor::crd::crds() {
                print!("{}", histor::crd::crd_yaml(&crd));
            }
        }
        [flag, dir] if flag == "--out-dir" => {
            std::fs::create_dir_all(dir)?;
            for (file, crd) in histor::crd::crds() {
                std::fs::write(
                    std::path::Path::new(dir).join(file),
                    histor::crd::crd_yaml(&crd),
                )?;
            }
        }
        _ => {
            eprintln!("usage: crdgen [--out-dir DIR]");
            std::process::exit(2);
        }
    }
    Ok(())
}
