//! Run-time compilation of the embedded kernel modules (`src/**/*.cu`) with NVRTC (loaded dynamically: `libnvrtc.so.13`).
//!
//! NVRTC compiles one source string and we give it no include paths, so a module's
//! `#include "name.cuh"` lines are resolved here first, textually, from the embedded
//! `src/**/*.cuh` (see [`KernelModule::expanded_source`]).

use crate::runtime::cuda::{KERNEL_FILES, KERNEL_HEADERS, KERNEL_SOURCES};
use crate::{Error, Result};
use cudarc::nvrtc::{result, sys};
use std::ffi::CString;
use std::fmt::Write as _;

/// One embedded kernel source file.
#[derive(Clone, Copy, Debug)]
pub struct KernelModule {
    /// The file stem, e.g. `interval_conv`.
    pub name: &'static str,
    pub source: &'static str,
}

/// Where the kernel file `file` (`name.cu` or `name.cuh`) lives, from the crate root (the bare
/// name for a file that is not embedded, such as a test's own module).
pub fn kernel_path(file: &str) -> String {
    KERNEL_FILES
        .iter()
        .find(|(f, _)| *f == file)
        .map_or_else(|| file.to_string(), |(_, path)| path.to_string())
}

impl KernelModule {
    /// Every embedded `src/**/*.cu`, in file-name order.
    pub fn all() -> impl Iterator<Item = KernelModule> {
        KERNEL_SOURCES
            .iter()
            .map(|&(name, source)| KernelModule { name, source })
    }

    /// The module called `name`.
    pub fn named(name: &str) -> Result<KernelModule> {
        Self::all().find(|m| m.name == name).ok_or_else(|| {
            Error::Invalid(format!(
                "no kernel module '{name}' among the embedded src/**/*.cu"
            ))
        })
    }

    /// The source NVRTC compiles: `source` with each `#include "name.cuh"` line replaced by the
    /// embedded `name.cuh`, recursively, each header at most once per module (as if it
    /// began with `#pragma once`; a repeated include becomes an empty line). Every inserted
    /// header is framed by `#line` directives, so NVRTC's messages and `-lineinfo` name the
    /// header or the module with their own line numbers. An include of a header that is not
    /// embedded is an error naming the file and the line. `#include <…>` lines are left to
    /// NVRTC (which has no CUDA headers: kernels use none). Includes are resolved on every line
    /// that is an include directive, also inside `#if` blocks.
    pub fn expanded_source(&self) -> Result<String> {
        let file = format!("{}.cu", self.name);
        let mut out = String::with_capacity(self.source.len());
        let mut included = Vec::new();
        expand_includes(&file, self.source, &mut included, &mut out)?;
        Ok(out)
    }
}

/// The file name in a `#include "name"` line, if `line` is one.
fn quoted_include(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix('#')?.trim_start();
    let rest = rest
        .strip_prefix("include")?
        .trim_start()
        .strip_prefix('"')?;
    rest.find('"').map(|end| &rest[..end])
}

/// Append `source` (the text of `file`) to `out` with its quoted includes expanded; `included`
/// holds the headers already inserted.
fn expand_includes(
    file: &str,
    source: &str,
    included: &mut Vec<&'static str>,
    out: &mut String,
) -> Result<()> {
    for (i, line) in source.lines().enumerate() {
        let Some(name) = quoted_include(line) else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let Some(&(header, text)) = KERNEL_HEADERS.iter().find(|(h, _)| *h == name) else {
            let known: Vec<&str> = KERNEL_HEADERS.iter().map(|(h, _)| *h).collect();
            return Err(Error::Invalid(format!(
                "{}:{}: #include \"{name}\": no such header, {name} is not embedded \
                 (src/**/*.cuh: {})",
                kernel_path(file),
                i + 1,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        };
        if included.contains(&header) {
            out.push('\n'); // keeps the following line numbers
            continue;
        }
        included.push(header);
        writeln!(out, "#line 1 \"{header}\"").unwrap();
        expand_includes(header, text, included, out)?;
        writeln!(out, "#line {} \"{file}\"", i + 2).unwrap();
    }
    Ok(())
}

/// Whether NVRTC's shared library can be loaded (it ships with the CUDA toolkit, or in PyPI's
/// `nvidia-cuda-nvrtc` wheel; `LD_LIBRARY_PATH` must reach it).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { sys::is_culib_present() }
}

/// NVRTC's options for `arch`.
pub fn compile_options(arch: &str) -> [String; 3] {
    [
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "-lineinfo".to_string(),
    ]
}

/// Compile `module` (its includes expanded: [`KernelModule::expanded_source`]) to a CUBIN for
/// `arch` (`sm_90`, `sm_80`, …): ptxas runs too, so register and shared-memory errors surface
/// here. An error carries NVRTC's log.
pub fn compile_module(module: KernelModule, arch: &str) -> Result<Vec<u8>> {
    // First, so that an unknown include is reported even where NVRTC is missing.
    let source = module.expanded_source()?;
    if !nvrtc_available() {
        return Err(Error::Invalid(
            "NVRTC (libnvrtc.so.13) is not loadable: install the CUDA toolkit or the PyPI wheel \
             nvidia-cuda-nvrtc==13.0.88 and put its lib folder on LD_LIBRARY_PATH"
                .into(),
        ));
    }
    let fail = |what: &str, e: &dyn std::fmt::Debug| {
        Error::Invalid(format!(
            "NVRTC, {} for {arch}: {what}: {e:?}",
            kernel_path(&format!("{}.cu", module.name))
        ))
    };
    let src = CString::new(source)
        .map_err(|_| fail("source holds a NUL byte", &"kernels must be text"))?;
    let name = CString::new(format!("{}.cu", module.name)).expect("a file name");
    let prog = result::create_program(&src, Some(&name)).map_err(|e| fail("create", &e))?;
    let options = compile_options(arch);
    // SAFETY: `prog` is a live program created above; it is destroyed exactly once below.
    let compiled = unsafe { result::compile_program(prog, &options) };
    let log = unsafe { result::get_program_log(prog) }
        .map(|chars| {
            let bytes: Vec<u8> = chars
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            String::from_utf8_lossy(&bytes).trim().to_string()
        })
        .unwrap_or_default();
    let cubin = compiled.map_err(|e| e.to_string()).and_then(|()| {
        let mut size = 0usize;
        // SAFETY: the program compiled; the buffer has the size NVRTC reports.
        unsafe {
            sys::nvrtcGetCUBINSize(prog, &mut size)
                .result()
                .map_err(|e| e.to_string())?;
            let mut bytes = vec![0u8; size];
            sys::nvrtcGetCUBIN(prog, bytes.as_mut_ptr() as *mut _)
                .result()
                .map_err(|e| e.to_string())?;
            Ok(bytes)
        }
    });
    // SAFETY: destroyed once, after its last use.
    let _ = unsafe { result::destroy_program(prog) };
    cubin.map_err(|e| {
        Error::Invalid(format!(
            "NVRTC could not compile {} for {arch} ({e}):\n{log}",
            kernel_path(&format!("{}.cu", module.name))
        ))
    })
}
