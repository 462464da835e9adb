//! The Docker build context, without a container engine: copy exactly what the Dockerfile's
//! COPY lines take from the context into an empty directory and let cargo read the manifest and
//! lockfile there (`cargo fetch --locked --offline`). A source the Dockerfile forgets (the `[[bench]]` files once) fails here in
//! under a second instead of in `docker build`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The context paths of the Dockerfile's `COPY` instructions (not `COPY --from`, not paths built
/// from an `ARG` such as the prebuilt target's binary).
fn copy_sources(dockerfile: &str) -> Vec<String> {
    // Join continuation lines first.
    let joined = dockerfile.replace("\\\n", " ");
    let mut sources = Vec::new();
    for line in joined.lines() {
        let mut words = line.split_whitespace();
        if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("COPY")) {
            continue;
        }
        let args: Vec<&str> = words.collect();
        if args.iter().any(|a| a.starts_with("--from")) {
            continue;
        }
        let paths: Vec<&str> = args.into_iter().filter(|a| !a.starts_with("--")).collect();
        let Some((_dest, srcs)) = paths.split_last() else {
            continue;
        };
        sources.extend(srcs.iter().filter(|s| !s.contains('$')).map(|s| s.to_string()));
    }
    sources
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).expect("create dir");
        for entry in std::fs::read_dir(from).expect("read dir") {
            let entry = entry.expect("dir entry");
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).expect("create dir");
        }
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
}

/// This machine's target triple: `cargo fetch` for every target would want crates (wasm-bindgen,
/// windows-sys) that were never downloaded here, and offline it cannot.
fn host_triple() -> String {
    let out = Command::new("rustc").arg("-vV").output().expect("run rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_string()
}

/// Run `cargo fetch --locked --offline --target <host>` in a directory holding only
/// `dockerfile`'s COPY sources (cargo reads the whole manifest, so a missing target file
/// fails; `cargo metadata --no-deps` would not notice); Err with cargo's output when it fails.
fn fetch_in_context(dockerfile: &str) -> Result<(), String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("temp dir");
    for source in copy_sources(dockerfile) {
        let from = root.join(&source);
        assert!(
            from.exists(),
            "the Dockerfile copies {source}, which is not in the repository"
        );
        copy_tree(&from, &dir.path().join(&source));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["fetch", "--locked", "--offline", "--target", &host_triple()])
        .current_dir(dir.path())
        .output()
        .expect("run cargo fetch");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn the_dockerfile_copies_everything_cargo_needs() {
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).expect("read Dockerfile");
    let sources = copy_sources(&dockerfile);
    for needed in ["Cargo.toml", "Cargo.lock", "src"] {
        assert!(sources.iter().any(|s| s == needed), "{needed} not copied: {sources:?}");
    }
    if let Err(e) = fetch_in_context(&dockerfile) {
        panic!("cargo cannot build from the Dockerfile's context:\n{e}");
    }
}

#[test]
fn the_guard_catches_a_missing_bench() {
    // The Dockerfile as it was before `COPY benches benches`: cargo must refuse the manifest.
    let broken = "FROM rust AS build\nCOPY Cargo.toml Cargo.lock ./\nCOPY src src\nCOPY scripts scripts\n";
    let e = fetch_in_context(broken).expect_err("a context without benches/ must fail");
    assert!(e.contains("bench"), "{e}");
}

#[test]
fn copy_lines_are_read_like_docker_reads_them() {
    let dockerfile = "FROM a AS build\nCOPY Cargo.toml Cargo.lock ./\nCOPY --chown=1:1 \\\n  src src\nCOPY --from=build /x /y\nARG BINARY\nCOPY ${BINARY} /usr/local/bin/x\n";
    assert_eq!(copy_sources(dockerfile), ["Cargo.toml", "Cargo.lock", "src"]);
}
