//! Embed every `kernels/*.cu` (a kernel module) and `kernels/*.cuh` (a header that modules
//! `#include "name.cuh"`) into the binary, so the CUDA backend can compile the modules with
//! NVRTC at run time on any machine (no CUDA toolkit at build time).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The files of `dir` whose extension is `ext`, in file-name order.
fn files_with_extension(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == ext))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
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
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    // The folder itself: a file added or removed changes its listing.
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut code = String::new();
    embed(
        &mut code,
        "(module name, CUDA C++ source) for every `kernels/*.cu`.",
        "KERNEL_SOURCES",
        &files_with_extension(&dir, "cu"),
        |f| f.file_stem().unwrap().to_string_lossy().into_owned(),
    );
    embed(
        &mut code,
        "(file name, CUDA C++ source) for every `kernels/*.cuh`: the headers that modules \
         `#include \"name.cuh\"` (resolved by `cuda::nvrtc` before NVRTC runs; never compiled \
         alone).",
        "KERNEL_HEADERS",
        &files_with_extension(&dir, "cuh"),
        |f| f.file_name().unwrap().to_string_lossy().into_owned(),
    );
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("kernel_sources.rs");
    std::fs::write(out, code).unwrap();
}
