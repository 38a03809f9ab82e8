//! Every `src/**/*.cu` compiles with NVRTC for the GPUs we target (sm_90: H100/H200, sm_80:
//! A100), ptxas included, without a GPU. Skips, saying so, where NVRTC cannot be loaded
//! (`bash scripts/gpu/get_nvrtc.sh` fetches it; `.ci/run` does, and sets CACTUS_REQUIRE_NVRTC=1 so
//! that a missing library fails instead of skipping). The `#include "name.cuh"` resolution
//! (src/**/*.cuh, embedded as headers, never compiled alone) is checked without NVRTC.

use cactus::runtime::cuda::KERNEL_HEADERS;
use cactus::runtime::cuda::{compile_module, nvrtc_available, KernelModule};
use std::collections::BTreeSet;

fn nvrtc_or_skip(test: &str) -> bool {
    if nvrtc_available() {
        return true;
    }
    if std::env::var_os("CACTUS_REQUIRE_NVRTC").is_some() {
        panic!("{test}: CACTUS_REQUIRE_NVRTC is set but libnvrtc.so.13 cannot be loaded");
    }
    eprintln!(
        "{test}: SKIPPED — NVRTC (libnvrtc.so.13) is not loadable; run `bash scripts/gpu/get_nvrtc.sh` \
         and put the folder it prints on LD_LIBRARY_PATH"
    );
    false
}

#[test]
fn every_kernel_module_compiles_for_sm90_and_sm80() {
    if !nvrtc_or_skip("every_kernel_module_compiles_for_sm90_and_sm80") {
        return;
    }
    let modules: Vec<KernelModule> = KernelModule::all().collect();
    assert!(!modules.is_empty(), "no src/**/*.cu embedded");
    for module in modules {
        for arch in ["sm_90", "sm_80"] {
            let started = std::time::Instant::now();
            let cubin = compile_module(module, arch).unwrap_or_else(|e| panic!("{e}"));
            let seconds = started.elapsed().as_secs_f64();
            // An ELF image.
            assert_eq!(&cubin[..4], b"\x7fELF", "{}.cu for {arch}", module.name);
            eprintln!(
                "{}.cu for {arch}: {} bytes in {seconds:.2} s",
                module.name,
                cubin.len()
            );
        }
    }
}

#[test]
fn a_broken_kernel_reports_nvrtc_log() {
    if !nvrtc_or_skip("a_broken_kernel_reports_nvrtc_log") {
        return;
    }
    let broken = KernelModule {
        name: "broken",
        source: "extern \"C\" __global__ void f(float* x) { x[0] = undefined_name; }",
    };
    let err = compile_module(broken, "sm_90").unwrap_err().to_string();
    assert!(
        err.contains("broken.cu") && err.contains("undefined_name"),
        "{err}"
    );
}

/// A module of the given text (tests only: the source must be `'static`).
fn module(name: &'static str, source: String) -> KernelModule {
    KernelModule {
        name,
        source: Box::leak(source.into_boxed_str()),
    }
}

#[test]
fn every_header_is_included_and_every_include_resolved() {
    assert!(!KERNEL_HEADERS.is_empty(), "no src/**/*.cuh embedded");
    let mut used = BTreeSet::new();
    for m in KernelModule::all() {
        let text = m.expanded_source().unwrap_or_else(|e| panic!("{e}"));
        for line in text.lines() {
            assert!(
                !line.trim_start().starts_with("#include"),
                "{}.cu: unresolved {line}",
                m.name
            );
            if let Some(h) = line.strip_prefix("#line 1 \"") {
                used.insert(h.trim_end_matches('"').to_string());
            }
        }
    }
    for (h, _) in KERNEL_HEADERS {
        assert!(used.contains(*h), "{h} is included by no module");
    }
}

#[test]
fn an_include_is_inserted_once_and_keeps_line_numbers() {
    let (h, text) = KERNEL_HEADERS[0];
    let m = module(
        "m",
        format!("// one\n#include \"{h}\"\n  #  include \"{h}\" // again\nint after;\n"),
    );
    let out = m.expanded_source().unwrap();
    assert_eq!(out.matches(&format!("#line 1 \"{h}\"")).count(), 1, "{out}");
    assert!(out.contains(text.trim_end()), "{out}");
    // After the header, line numbering resumes at the module's line 3 (the repeated include,
    // now blank), so `int after;` is still line 4 of m.cu.
    let lines: Vec<&str> = out.lines().collect();
    let after = lines.iter().position(|l| *l == "int after;").unwrap();
    assert_eq!(lines[after - 2], "#line 3 \"m.cu\"", "{out}");
    assert_eq!(lines[after - 1], "");
    assert_eq!(lines[0], "// one");
    assert_eq!(lines[1], format!("#line 1 \"{h}\""));
}

#[test]
fn an_unknown_include_is_an_error_naming_the_file() {
    let m = module(
        "broken",
        "// a kernel\n#include \"no_such_header.cuh\"\n".to_string(),
    );
    let err = m.expanded_source().unwrap_err().to_string();
    assert!(
        err.contains("broken.cu:2") && err.contains("no_such_header.cuh"),
        "{err}"
    );
    // compile_module reports it before it needs NVRTC.
    let err = compile_module(m, "sm_90").unwrap_err().to_string();
    assert!(err.contains("no_such_header.cuh"), "{err}");
}

#[test]
fn nvrtc_reports_module_lines_after_an_include() {
    if !nvrtc_or_skip("nvrtc_reports_module_lines_after_an_include") {
        return;
    }
    let (h, _) = KERNEL_HEADERS[0];
    let m = module(
        "broken",
        format!(
            "#include \"{h}\"\n\nextern \"C\" __global__ void f(float* x) {{ x[0] = undefined_name; }}\n"
        ),
    );
    let err = compile_module(m, "sm_90").unwrap_err().to_string();
    assert!(
        err.contains("broken.cu(3)") && err.contains("undefined_name"),
        "{err}"
    );
}

#[test]
fn compiled_modules_are_cached_on_disk() {
    use cactus::runtime::cuda::kernel_cache::{load_module_in, Origin};
    if !nvrtc_or_skip("compiled_modules_are_cached_on_disk") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("cactus-kernel-cache-{}", std::process::id()));
    let module = KernelModule::named("prune").unwrap();
    // A loader standing in for the driver's: it takes ELF images and refuses anything else.
    let elf = |bytes: Vec<u8>| -> cactus::Result<Vec<u8>> {
        if bytes.starts_with(b"\x7fELF") {
            Ok(bytes)
        } else {
            Err(cactus::Error::Invalid("not an ELF image".into()))
        }
    };
    let (first, origin) = load_module_in(Some(&dir), module, "sm_90", elf).unwrap();
    assert_eq!(origin, Origin::Compiled);
    let (again, origin) = load_module_in(Some(&dir), module, "sm_90", elf).unwrap();
    assert_eq!(
        origin,
        Origin::Cache,
        "the second load reads the stored entry"
    );
    assert_eq!(again, first);
    // Another architecture is another entry.
    let (_, origin) = load_module_in(Some(&dir), module, "sm_80", elf).unwrap();
    assert_eq!(origin, Origin::Compiled);
    // A damaged entry is dropped and compiled again, and the cache repaired.
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("sm_90"))
        .collect();
    assert_eq!(entries.len(), 1, "one sm_90 entry: {entries:?}");
    std::fs::write(&entries[0], b"damaged").unwrap();
    let (repaired, origin) = load_module_in(Some(&dir), module, "sm_90", elf).unwrap();
    assert_eq!(origin, Origin::Compiled);
    assert_eq!(repaired, first);
    let (_, origin) = load_module_in(Some(&dir), module, "sm_90", elf).unwrap();
    assert_eq!(origin, Origin::Cache);
    // An edited source misses the cache.
    let edited = self::module("prune", format!("{}\n// edited\n", module.source));
    let (_, origin) = load_module_in(Some(&dir), edited, "sm_90", elf).unwrap();
    assert_eq!(origin, Origin::Compiled);
    std::fs::remove_dir_all(&dir).unwrap();
}
