//! `kubebed`: the one-machine Kubernetes test bed.

fn main() -> anyhow::Result<()> {
    kubebed::cli::main()
}
