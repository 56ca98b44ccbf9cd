//! Writes the RegistryCluster CRD to `crds/registrycluster.yaml` (or stdout with `-`).

fn main() -> anyhow::Result<()> {
    let yaml = operator::crd::crd_yaml()?;
    match std::env::args().nth(1).as_deref() {
        Some("-") => print!("{yaml}"),
        Some(path) => std::fs::write(path, yaml)?,
        None => {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/registrycluster.yaml");
            std::fs::write(path, yaml)?;
        }
    }
    Ok(())
}
