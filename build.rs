//! Embed every `src/**/*.cu` (a kernel module, beside the op it serves) and `src/**/*.cuh` (a
//! header that modules `#include "name.cuh"`) into the binary, so the CUDA runtime can compile
//! the modules with NVRTC at run time on any machine (no CUDA toolkit at build time). Module
//! names are file stems and header names file names: both must be unique across `src/`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Every folder under `dir` (itself included), so that a file added anywhere reruns the build.
fn folders(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    entries.sort();
    for e in entries.into_iter().filter(|e| e.is_dir()) {
        folders(&e, out);
    }
}

/// The files under `dirs` whose extension is `ext`, ordered by file name, with a build error
/// when two share a name (kernels are found by name).
fn files_with_extension(dirs: &[PathBuf], ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = dirs
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten())
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    for pair in files.windows(2) {
        assert!(
            pair[0].file_name() != pair[1].file_name(),
            "two kernel files named {:?}: {} and {}",
            pair[0].file_name().unwrap(),
            pair[0].display(),
            pair[1].display()
        );
    }
    files
}

/// `pub const {name}: &[(&str, &str)]`, one (key, `include_str!(file)`) entry per file.
fn embed(
    code: &mut String,
    doc: &str,
    name: &str,
    files: &[PathBuf],
    key: impl Fn(&Path) -> String,
) {
    writeln!(code, "/// {doc}").unwrap();
    writeln!(code, "pub const {name}: &[(&str, &str)] = &[").unwrap();
    for f in files {
        println!("cargo:rerun-if-changed={}", f.display());
        writeln!(
            code,
            "    ({:?}, include_str!({:?})),",
            key(f),
            f.display().to_string()
        )
        .unwrap();
    }
    code.push_str("];\n");
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = Vec::new();
    folders(&root.join("src"), &mut dirs);
    // Every folder: a file added or removed changes its listing.
    for d in &dirs {
        println!("cargo:rerun-if-changed={}", d.display());
    }
    let mut code = String::new();
    embed(
        &mut code,
        "(module name, CUDA C++ source) for every `src/**/*.cu`.",
        "KERNEL_SOURCES",
        &files_with_extension(&dirs, "cu"),
        |f| f.file_stem().unwrap().to_string_lossy().into_owned(),
    );
    embed(
        &mut code,
        "(file name, CUDA C++ source) for every `src/**/*.cuh`: the headers that modules \
         `#include \"name.cuh\"` (resolved by `cuda::nvrtc` before NVRTC runs; never compiled \
         alone).",
        "KERNEL_HEADERS",
        &files_with_extension(&dirs, "cuh"),
        |f| f.file_name().unwrap().to_string_lossy().into_owned(),
    );
    // Where each file lives, for messages that name it.
    code.push_str(
        "/// (file name, path from the crate root) of every kernel module and header.\n\
         pub const KERNEL_FILES: &[(&str, &str)] = &[\n",
    );
    let mut all = files_with_extension(&dirs, "cu");
    all.extend(files_with_extension(&dirs, "cuh"));
    for f in &all {
        let rel = f.strip_prefix(root).unwrap_or(f);
        writeln!(
            code,
            "    ({:?}, {:?}),",
            f.file_name().unwrap().to_string_lossy(),
            rel.display().to_string()
        )
        .unwrap();
    }
    code.push_str("];\n");
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("kernel_sources.rs");
    std::fs::write(out, code).unwrap();
}
